pub mod announce;
pub mod netlink;
pub mod socket;
