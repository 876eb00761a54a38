//! Which kernel functions the running kernel really has, for the attach plan: /proc/kallsyms
//! (kprobes) next to BTF (fentry/fexit). Compiler-made local copies such as
//! `copy_process.isra.0` count, with their real symbol name kept for attaching.
use std::collections::HashMap;

/// Kernel functions found in /proc/kallsyms, by the name the agent asked for.
#[derive(Debug, Default, Clone)]
pub struct Kallsyms {
    /// Wanted name → the symbol to attach to (itself, or a suffixed local copy).
    found: HashMap<String, String>,
}

impl Kallsyms {
    /// Looks up `wanted` in /proc/kallsyms (empty if unreadable).
    pub fn read(wanted: &[&str]) -> Self {
        Self::parse(&std::fs::read_to_string("/proc/kallsyms").unwrap_or_default(), wanted)
    }

    /// From the text of /proc/kallsyms, keeping only `wanted`.
    pub fn parse(text: &str, wanted: &[&str]) -> Self {
        let mut found: HashMap<String, String> = HashMap::new();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(_addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if !matches!(kind, "t" | "T") {
                continue;
            }
            let base = name.split('.').next().unwrap_or(name);
            if wanted.contains(&base) {
                // The exact name wins over a suffixed copy.
                let entry = found.entry(base.to_string()).or_insert_with(|| name.to_string());
                if name == base {
                    *entry = name.to_string();
                }
            }
        }
        Self { found }
    }

    /// The address of the data symbol `name` (kind r/R/d/D) in the text of /proc/kallsyms;
    /// `None` when absent or hidden (kptr_restrict shows zeros).
    pub fn data_address(text: &str, name: &str) -> Option<u64> {
        text.lines().find_map(|line| {
            let mut parts = line.split_whitespace();
            let (addr, kind, sym) = (parts.next()?, parts.next()?, parts.next()?);
            if sym != name || !matches!(kind, "r" | "R" | "d" | "D") {
                return None;
            }
            u64::from_str_radix(addr, 16).ok().filter(|&a| a != 0)
        })
    }

    /// The symbol a kprobe on `func` attaches to, if the kernel has one.
    pub fn symbol(&self, func: &str) -> Option<&str> {
        self.found.get(func).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exact_and_suffixed() {
        let text = "ffffffff81000000 T copy_process\nffffffff81000100 t anon_inode_getfile.isra.0\n\
                    ffffffff81000200 D cgroup_can_fork\nffffffff81000300 t pidfs_alloc_file [pidfs]\n";
        let k = Kallsyms::parse(
            text,
            &["copy_process", "anon_inode_getfile", "cgroup_can_fork", "pidfs_alloc_file", "missing"],
        );
        assert_eq!(k.symbol("copy_process"), Some("copy_process"));
        assert_eq!(k.symbol("anon_inode_getfile"), Some("anon_inode_getfile.isra.0"));
        assert_eq!(k.symbol("cgroup_can_fork"), None, "data symbols are not functions");
        assert_eq!(k.symbol("pidfs_alloc_file"), Some("pidfs_alloc_file"));
        assert_eq!(k.symbol("missing"), None);
        let data = "ffffffff82000000 r pidfs_file_operations\n0000000000000000 r hidden_ops\n";
        assert_eq!(Kallsyms::data_address(data, "pidfs_file_operations"), Some(0xffff_ffff_8200_0000));
        assert_eq!(Kallsyms::data_address(data, "hidden_ops"), None);
        assert_eq!(Kallsyms::data_address(text, "copy_process"), None, "a function is not data");
    }
}
