//! SeaORM entities of the tables read through SeaORM's query builder. The counter
//! tables and `aggregator_partitions` are written and read with hand-written SQL
//! (multi-row upserts, `FOR UPDATE` claims) whose rows are typed with
//! `FromQueryResult`; they have no entity.

pub mod job;

pub use job::{Entity as Job, JobKind, JobStatus, Model as JobRow};
