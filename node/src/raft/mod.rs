//! Everything openraft: the type configuration, the transport client and
//! the transport server. No other module names openraft's network types.

pub mod batch;
pub mod log_range;
pub mod network;
pub mod quiesce;
pub mod transport;
pub mod types;
