import { defineConfig } from "vite";

export default defineConfig({
  // React's automatic JSX runtime, without a plugin.
  esbuild: { jsx: "automatic" },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    rollupOptions: {
      onwarn(warning, warn) {
        // viewpipe/react starts with "use client" for React Server Components
        // (Next.js); a client-only bundle has no use for it.
        if (warning.code === "MODULE_LEVEL_DIRECTIVE" && /"use client"/.test(warning.message)) return;
        warn(warning);
      },
    },
  },
});
