//! Which process is on the other end of a loopback TCP connection (Linux), so that a worker's
//! Runtime API serves that worker only.
//!
//! The connecting socket is found in `/proc/net/tcp` (or `tcp6`) by its address, which gives its
//! inode; the connection is the group's when a process of the process group holds a descriptor
//! for that inode. Off Linux, or when `/proc` cannot be read, nothing can be checked and every
//! connection is admitted (logged once).

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
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return false;
    };
    let link = format!("socket:[{inode}]");
    processes
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| process_group(*pid) == Some(group))
        .any(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.as_os_str() == link.as_str())
                })
            })
        })
}

/// The process group of `pid`, from `/proc/<pid>/stat` (fields after the command name: state,
/// parent, group).
fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(2)?.parse().ok()
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
}
