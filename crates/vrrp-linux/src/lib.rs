pub mod announce;
pub mod driver;
pub mod metrics;
pub mod netlink;
pub mod notify;
pub mod second_chance;
pub mod socket;
