//! Virtual addresses on interfaces, over rtnetlink. The only rtnetlink user in palisade
//! (its API changes with every minor release, so it stays behind this small surface).
//!
//! Applying is idempotent: adding a VIP that is present and removing one that is absent both
//! succeed, so restarts and split-brain heals simply re-apply.

use std::net::IpAddr;

use futures_util::stream::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::LinkFlags;
use rtnetlink::Handle;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Open(std::io::Error),
    #[error("interface {0} not found")]
    NoSuchInterface(String),
    #[error("{operation} {address} on {interface}: {source}")]
    Request {
        operation: &'static str,
        address: IpAddr,
        interface: String,
        source: std::io::Error,
    },
    #[error("netlink query failed: {0}")]
    Query(String),
}

/// A handle to the kernel's address tables. Cheap to clone.
#[derive(Clone)]
pub struct Addresses {
    handle: Handle,
}

impl Addresses {
    /// Opens a netlink connection; its driver runs under `tasks` until every clone of the
    /// handle is dropped.
    pub fn open(tasks: &tokio_util::task::TaskTracker) -> Result<Addresses, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Open)?;
        tasks.spawn(connection);
        Ok(Addresses { handle })
    }

    /// The index of interface `name`.
    pub async fn interface_index(&self, name: &str) -> Result<u32, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(NetlinkError::NoSuchInterface(name.to_owned())),
            // The kernel answers ENODEV for an unknown name.
            Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -libc::ENODEV => {
                Err(NetlinkError::NoSuchInterface(name.to_owned()))
            }
            Err(error) => Err(NetlinkError::Query(error.to_string())),
        }
    }

    /// Whether interface `index` is up and has a carrier (`IFF_UP` and `IFF_LOWER_UP`); a
    /// vanished interface is down.
    pub async fn link_up(&self, index: u32) -> Result<bool, NetlinkError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(Some(link)) => {
                let flags = link.header.flags;
                Ok(flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp))
            }
            Ok(None) => Ok(false),
            Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -libc::ENODEV => {
                Ok(false)
            }
            Err(error) => Err(NetlinkError::Query(error.to_string())),
        }
    }

    /// Adds `address/prefix_len` to interface `index` (named `interface` in errors). IPv6
    /// VIPs skip duplicate address detection: the address must answer at once after a
    /// takeover, and VRRP itself guarantees it is unique.
    pub async fn add(
        &self,
        index: u32,
        interface: &str,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let mut request = self.handle.address().add(index, address, prefix_len);
        if address.is_ipv6() {
            request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -libc::EEXIST => {
                Ok(())
            }
            Err(error) => Err(request_error("add", address, interface, error)),
        }
    }

    /// Removes `address` from interface `index` (any prefix length).
    pub async fn remove(
        &self,
        index: u32,
        interface: &str,
        address: IpAddr,
    ) -> Result<(), NetlinkError> {
        let Some(message) = self.find(index, address).await? else {
            return Ok(());
        };
        match self.handle.address().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(error))
                if error.raw_code() == -libc::EADDRNOTAVAIL =>
            {
                Ok(())
            }
            Err(error) => Err(request_error("remove", address, interface, error)),
        }
    }

    /// Whether `address` is configured on interface `index`.
    pub async fn contains(&self, index: u32, address: IpAddr) -> Result<bool, NetlinkError> {
        Ok(self.find(index, address).await?.is_some())
    }

    async fn find(
        &self,
        index: u32,
        address: IpAddr,
    ) -> Result<Option<AddressMessage>, NetlinkError> {
        let mut messages = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        loop {
            match messages.try_next().await {
                Ok(Some(message)) => {
                    let matches = message.attributes.iter().any(|attribute| {
                        matches!(attribute, AddressAttribute::Address(found) | AddressAttribute::Local(found) if *found == address)
                    });
                    if matches {
                        return Ok(Some(message));
                    }
                }
                Ok(None) => return Ok(None),
                Err(error) => return Err(NetlinkError::Query(error.to_string())),
            }
        }
    }
}

fn request_error(
    operation: &'static str,
    address: IpAddr,
    interface: &str,
    error: rtnetlink::Error,
) -> NetlinkError {
    let source = match error {
        rtnetlink::Error::NetlinkError(message) => message.to_io(),
        other => std::io::Error::other(other.to_string()),
    };
    NetlinkError::Request {
        operation,
        address,
        interface: interface.to_owned(),
        source,
    }
}
