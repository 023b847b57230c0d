//! `jobs`: admin flushes and backfill month runs, as `GET /api/jobs/{id}` shows them.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Order of creation; flush requests are answered by this number.
    pub seq: i64,
    /// `flush` or `backfill`.
    pub kind: String,
    /// The aggregators' group a flush asks (`None` for backfills).
    pub consumer_group: Option<String>,
    /// `queued`, `running`, `completed` or `failed`.
    pub status: String,
    pub params: Json,
    pub result: Option<Json>,
    pub error: Option<String>,
    pub created_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
