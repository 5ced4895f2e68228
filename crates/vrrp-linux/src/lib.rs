pub mod announce;
pub mod heartbeat;
pub mod netlink;
pub mod socket;
