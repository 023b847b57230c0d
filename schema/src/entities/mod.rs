//! SeaORM entities of the contract's tables and of the aggregator's own bookkeeping.

pub mod aggregator_partition;
pub mod job;
pub mod view_counter_daily;
pub mod view_counter_total;

pub mod prelude {
    pub use super::aggregator_partition::Entity as AggregatorPartition;
    pub use super::job::Entity as Job;
    pub use super::view_counter_daily::Entity as ViewCounterDaily;
    pub use super::view_counter_total::Entity as ViewCounterTotal;
}
