pub mod announce;
pub mod driver;
pub mod heartbeat;
pub mod mesh;
pub mod metrics;
pub mod netlink;
pub mod notify;
pub mod socket;
