//! Which process is on the other end of a loopback TCP connection (Linux), so that a worker's
//! Runtime API serves that worker only.
//!
//! The kernel says which socket the connecting end is (its inode), asked by the connection's
//! addresses over sock_diag netlink: one exact lookup, microseconds. `/proc/net/tcp` (or `tcp6`)
//! gives the same answer but walks the whole connection table on each read (5 ms and more on a
//! host with a large table, which stalled an invocation each time a worker opened a connection);
//! it is read only when sock_diag cannot be used. The connection is the group's when a process of
//! the process group holds a descriptor for that inode (the worker itself is looked at first). Off
//! Linux, or when the connection table cannot be read at all, nothing can be checked and every
//! connection is admitted (logged once); a connection whose socket is found but held by no
//! process of the group (or whose processes cannot be read) is refused.

use std::net::SocketAddr;

/// Whether the peer of the connection from `peer` to `local` is a process of process group
/// `group`.
pub fn connected_from_group(peer: SocketAddr, local: SocketAddr, group: u32) -> bool {
    match socket_inode(peer, local) {
        Some(inode) => group_holds_socket(group, inode),
        None if cfg!(target_os = "linux") && std::path::Path::new("/proc/net/tcp").exists() => {
            false
        }
        None => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| tracing::warn!("cannot tell which process connects to a Runtime API (no /proc/net/tcp); every local process is admitted"));
            true
        }
    }
}

/// The `/proc/net/tcp*` form of an address: the IPv4 (or IPv6) bytes as host-order words in hex,
/// then the port in hex.
fn proc_address(address: SocketAddr) -> String {
    match address {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(v6) => {
            let octets = v6.ip().octets();
            let words: String = octets
                .chunks(4)
                .map(|word| {
                    format!(
                        "{:08X}",
                        u32::from_ne_bytes([word[0], word[1], word[2], word[3]])
                    )
                })
                .collect();
            format!("{words}:{:04X}", v6.port())
        }
    }
}

/// The inode of the socket whose local address is `peer` and remote address `local`.
fn socket_inode(peer: SocketAddr, local: SocketAddr) -> Option<u64> {
    #[cfg(target_os = "linux")]
    match diag::socket_inode(peer, local) {
        Ok(Some(inode)) => return Some(inode),
        // The kernel answers "no such entry" both for a socket it does not have and when it has
        // no TCP sock_diag handler (a kernel without tcp_diag): the table decides. Only a
        // connection that is refused anyway pays for reading it.
        Ok(None) => {}
        Err(error) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| tracing::warn!(%error, "cannot ask the kernel which socket connects to a Runtime API (sock_diag); reading /proc/net/tcp instead, which is slow on a host with many connections"));
        }
    }
    proc_net_socket_inode(peer, local)
}

/// [`socket_inode`] from the `/proc/net/tcp*` table.
fn proc_net_socket_inode(peer: SocketAddr, local: SocketAddr) -> Option<u64> {
    let (wanted_local, wanted_remote) = (proc_address(peer), proc_address(local));
    let table = if peer.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table).ok()?;
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 9 && fields[1] == wanted_local && fields[2] == wanted_remote)
            .then(|| fields[9].parse().ok())
            .flatten()
    })
}

/// Whether a process of group `group` holds a descriptor of socket `inode`.
fn group_holds_socket(group: u32, inode: u64) -> bool {
    let link = format!("socket:[{inode}]");
    let holds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.filter_map(Result::ok).any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.as_os_str() == link.as_str())
            })
        })
    };
    // The group's leader (pid == group) is the worker itself, which nearly always is the one
    // that connects: look there before walking every process.
    if process_group(group) == Some(group) && holds(group) {
        return true;
    }
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return false;
    };
    processes
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != group && process_group(pid) == Some(group))
        .any(holds)
}

/// The process group of `pid`, from `/proc/<pid>/stat` (fields after the command name: state,
/// parent, group).
fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(2)?.parse().ok()
}

/// One exact sock_diag lookup (`SOCK_DIAG_BY_FAMILY` without `NLM_F_DUMP`): the kernel finds
/// the socket by its four-tuple instead of listing every socket.
#[cfg(target_os = "linux")]
mod diag {
    use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_sock_diag::SockDiagMessage;
    use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, TCP_LISTEN};
    use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
    use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};
    use std::io;
    use std::net::SocketAddr;

    /// `Ok(None)` when the kernel knows no such socket; `Err` when it could not be asked.
    pub fn socket_inode(peer: SocketAddr, local: SocketAddr) -> io::Result<Option<u64>> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family: if peer.is_ipv4() { AF_INET } else { AF_INET6 },
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
                socket_id: SocketId {
                    source_port: peer.port(),
                    destination_port: local.port(),
                    source_address: peer.ip(),
                    destination_address: local.ip(),
                    interface_id: 0,
                    // INET_DIAG_NOCOOKIE: match by address alone.
                    cookie: [0xff; 8],
                },
            })
            .into(),
        );
        request.finalize();
        let mut buffer = vec![0; request.buffer_len()];
        request.serialize(&mut buffer);
        socket.send(&buffer, 0)?;
        // The kernel answers within send(): the reply is queued by now, so never block for it.
        let mut reply = Vec::with_capacity(8192);
        let size = socket.recv(&mut reply, libc::MSG_DONTWAIT)?;
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(&reply[..size])
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
        match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                let found = &response.header;
                // The exact lookup falls back to a listener on the source address and port when
                // no connection matches: only the connection itself counts. Inode 0 is a socket
                // no process holds (TIME_WAIT).
                let exact = found.state != TCP_LISTEN
                    && found.socket_id.source_port == peer.port()
                    && found.socket_id.destination_port == local.port()
                    && found.socket_id.source_address == peer.ip()
                    && found.socket_id.destination_address == local.ip();
                Ok((exact && found.inode != 0).then_some(u64::from(found.inode)))
            }
            NetlinkPayload::Error(error) if error.raw_code() == -libc::ENOENT => Ok(None),
            NetlinkPayload::Error(error) => Err(error.to_io()),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected sock_diag reply: {other:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_proc_net_tcp_writes_them() {
        if cfg!(target_endian = "little") {
            assert_eq!(
                proc_address("127.0.0.1:8080".parse().unwrap()),
                "0100007F:1F90"
            );
        }
    }

    #[tokio::test]
    async fn a_connection_from_this_process_is_this_groups_and_no_other() {
        if !std::path::Path::new("/proc/net/tcp").exists() {
            return;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(address).await.unwrap();
        let (server_side, peer) = listener.accept().await.unwrap();
        let local = server_side.local_addr().unwrap();
        // SAFETY: getpgrp has no preconditions.
        let own_group = unsafe { libc::getpgrp() } as u32;
        assert!(connected_from_group(peer, local, own_group));
        assert!(!connected_from_group(peer, local, own_group + 1_000_000));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn sock_diag_finds_the_same_socket_as_proc_net_tcp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(address).await.unwrap();
        let (server_side, peer) = listener.accept().await.unwrap();
        let local = server_side.local_addr().unwrap();
        let Ok(inode) = diag::socket_inode(peer, local) else {
            eprintln!("sock_diag cannot be used here (a sandboxed kernel?); nothing to compare");
            return;
        };
        assert!(inode.is_some());
        if std::path::Path::new("/proc/net/tcp").exists() {
            assert_eq!(inode, proc_net_socket_inode(peer, local));
        }
        // A connection from the listener's own address does not exist: the kernel's fallback to
        // the listening socket must not count as one.
        assert_eq!(diag::socket_inode(address, local).unwrap(), None);
    }
}
