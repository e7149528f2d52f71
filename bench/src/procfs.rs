//! What the tool reads about processes from Linux's /proc (resident memory, CPU time, children,
//! TCP sockets) and the descriptor limit it raises for itself.

/// Resident memory of `pid` in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time of `pid` (all threads, user + system) in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / USER_HZ)
}

/// CPU time all cores spent busy (not idle or waiting for I/O) since boot, in seconds: the
/// line `cpu` of /proc/stat. Compared with the tool's and the brokers' own time it shows how
/// much else ran on the machine during a measurement.
pub fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(&stat).map(|ticks| ticks as f64 / USER_HZ)
}

fn parse_machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = ticks.iter().take(8).sum();
    Some(total - ticks.get(3)? - ticks.get(4).unwrap_or(&0))
}

/// The unit of /proc/PID/stat times: fixed at 100 by Linux's user-space ABI.
const USER_HZ: f64 = 100.0;

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) of the whole line are 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// TCP socket states as /proc/net/tcp writes them.
const TCP_ESTABLISHED: &str = "01";
const TCP_LISTEN: &str = "0A";

/// Whether something listens on TCP `port` (any address, IPv4 or IPv6).
pub fn listening(port: u16) -> bool {
    tcp_sockets(port, TCP_LISTEN) > 0
}

/// How many established TCP connections have `port` as their local port.
pub fn established(port: u16) -> usize {
    tcp_sockets(port, TCP_ESTABLISHED)
}

fn tcp_sockets(port: u16, state: &str) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|table| count_sockets(&table, port, state))
        .sum()
}

/// Rows of a /proc/net/tcp table with local port `port` in `state`: each row is `sl
/// local_address rem_address st ...`, an address being `HEXADDR:HEXPORT`.
fn count_sockets(table: &str, port: u16, state: &str) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|row| {
            let fields: Vec<&str> = row.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && fields.get(3) == Some(&state)
        })
        .count()
}

/// The children of `parent` whose command name (at most 15 bytes) is `name`.
pub fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .is_some_and(|stat| parse_parent_and_name(&stat) == Some((parent, name)))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether `pid` is alive (a zombie, ended but not yet reaped, is not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = &stat[stat.rfind(')')? + 1..];
            after.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// The parent pid and command name from a /proc/PID/stat line.
fn parse_parent_and_name(stat: &str) -> Option<(u32, &str)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = &stat[open + 1..close];
    let ppid = stat[close + 1..].split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, name))
}

/// Raises this process's open-file limit to at least `want` if it can (root may raise the hard
/// limit too); returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    use rlimit::Resource;
    let Ok((soft, hard)) = Resource::NOFILE.get() else {
        return 0;
    };
    if soft >= want {
        return soft;
    }
    if hard < want && Resource::NOFILE.set(want, want).is_ok() {
        return want;
    }
    let soft = want.min(hard);
    match Resource::NOFILE.set(soft, hard) {
        Ok(()) => soft,
        Err(_) => Resource::NOFILE.get().map(|(s, _)| s).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_and_stat() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmPeak:\t  9 kB\nVmRSS:\t   12345 kB\n"),
            Some(12345)
        );
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        let machine = "cpu  100 5 50 1000 20 1 4 0 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(parse_machine_busy(machine), Some(160));
        assert!(machine_busy_secs().is_some());
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_secs(me).is_some());
    }

    #[test]
    fn reads_sockets_and_children() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 0100007F:3D49 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n\
   1: 0100007F:3D49 0100007F:C350 01 00000000:00000000 00:00000000 00000000\n\
   2: 0100007F:C350 0100007F:3D49 01 00000000:00000000 00:00000000 00000000\n";
        assert_eq!(count_sockets(table, 15689, TCP_LISTEN), 1);
        assert_eq!(count_sockets(table, 15689, TCP_ESTABLISHED), 1);
        assert_eq!(count_sockets(table, 80, TCP_LISTEN), 0);
        let stat = "77 (beam.smp) S 42 77 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0";
        assert_eq!(parse_parent_and_name(stat), Some((42, "beam.smp")));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(listening(listener.local_addr().unwrap().port()));
        assert!(alive(std::process::id()));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert_eq!(children_named(std::process::id(), "sleep"), [child.id()]);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
