//! Reading /proc: which processes exist, their parent, process group and start time.
//!
//! Nothing announces that a process's children changed or that a process group emptied when
//! they are not rewire's own children (a worker of nginx, what a job left behind), so the PID 1
//! reaper, the stop of leftovers and the confirmation of a signal reload look here.

/// One line of /proc/PID/stat, the fields rewire reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    /// `R`, `S`, `Z` (a zombie: exited, not reaped), ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// Clock ticks after boot.
    pub start: u64,
}

impl Stat {
    /// Parses "pid (comm) state ppid pgrp ..." with the start time the 22nd field; comm may
    /// hold spaces and parentheses.
    pub fn parse(line: &str) -> Option<Stat> {
        let (head, rest) = line.rsplit_once(')')?;
        let pid = head.split_whitespace().next()?.parse().ok()?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(Stat {
            pid,
            state: fields.first()?.chars().next()?,
            ppid: fields.get(1)?.parse().ok()?,
            pgrp: fields.get(2)?.parse().ok()?,
            start: fields.get(19)?.parse().ok()?,
        })
    }

    /// Whether it still runs (a zombie does not).
    pub fn live(&self) -> bool {
        self.state != 'Z'
    }
}

/// Every process this one can see (one that exits meanwhile is left out).
pub fn all() -> impl Iterator<Item = Stat> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Stat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?))
}

/// The live children of `parent`.
pub fn children(parent: i32) -> Vec<i32> {
    all()
        .filter(|s| s.ppid == parent && s.live())
        .map(|s| s.pid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_whose_name_holds_parentheses_and_spaces() {
        let line = "4242 (a (b) c) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200 18446744073709551615";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                pid: 4242,
                state: 'S',
                ppid: 1,
                pgrp: 4240,
                start: 987654
            })
        );
    }

    #[test]
    fn a_child_is_found_under_its_parent() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(children(std::process::id() as i32).contains(&pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!children(std::process::id() as i32).contains(&pid));
    }
}
