//! Where the kernel programs keep each thread's entry state on this kernel
//! (pidfd-trace-ebpf/src/state.rs): task-local storage where the kernel lets our program
//! types use it, else the `ENTER_STATE` hash. `check` and the start-up log name the choice
//! (README "Overhead").
use std::borrow::Cow;

use aya::{
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported},
};
use pidfd_trace_common::TASK_STATE_MAP;

/// `PIDFD_TRACE_ENTRY_STATE=hash` makes the agent use the hash where it would use task storage.
pub const FORCE_ENV: &str = "PIDFD_TRACE_ENTRY_STATE";

/// The store chosen for this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateStore {
    /// BPF_MAP_TYPE_TASK_STORAGE (`bpf_task_storage_get` from tracepoint, raw tracepoint and
    /// kprobe programs: 5.12+, kernel/trace/bpf_trace.c `bpf_tracing_func_proto`).
    Task,
    /// The `ENTER_STATE` LRU hash, and why task storage is not used.
    Hash(String),
}

impl StateStore {
    /// Probes the running kernel: every program type that keeps entry state must have both
    /// helpers the task store calls (a verifier "unknown func" answer means it has not).
    pub fn probe() -> Self {
        // For tests of the hash path on kernels that have task storage (docs/cli.md).
        if std::env::var(FORCE_ENV).is_ok_and(|v| v == "hash") {
            return Self::Hash(format!("{FORCE_ENV}=hash"));
        }
        if !aya::sys::is_map_supported(aya::maps::MapType::TaskStorage).unwrap_or(false) {
            return Self::Hash("no BPF_MAP_TYPE_TASK_STORAGE in this kernel (before 5.11)".into());
        }
        let helpers = [BpfHelper::BPF_FUNC_task_storage_get, BpfHelper::BPF_FUNC_get_current_task_btf];
        for ty in [ProgramType::TracePoint, ProgramType::RawTracePoint, ProgramType::KProbe] {
            for h in helpers {
                match is_helper_supported(ty, h) {
                    Ok(true) => {}
                    Ok(false) => {
                        return Self::Hash(format!(
                            "{ty:?} programs cannot call {h:?} (before 5.12, or no such program type)"
                        ));
                    }
                    Err(e) => return Self::Hash(format!("probing {h:?} for {ty:?} programs failed: {e}")),
                }
            }
        }
        Self::Task
    }

    /// `check`'s `entry_state.store`: `task_storage` or `hash` (docs/cli.md).
    pub fn key(&self) -> &'static str {
        match self {
            Self::Task => "task_storage",
            Self::Hash(_) => "hash",
        }
    }

    /// `check`'s `entry_state.reason`: why not task storage; None when it is.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Task => None,
            Self::Hash(why) => Some(why),
        }
    }

    /// One line for logs and `check`.
    pub fn describe(&self) -> String {
        match self {
            Self::Task => "task-local storage (BPF_MAP_TYPE_TASK_STORAGE)".into(),
            Self::Hash(why) => format!("LRU hash ENTER_STATE; task-local storage unusable: {why}"),
        }
    }

    /// The `STATE_IN_TASK` global.
    pub fn global(&self) -> u8 {
        u8::from(*self == Self::Task)
    }
}

/// The kernel object as this store needs it. For the hash store, `TASK_STATE`'s BTF
/// definition is turned into a socket-local-storage map (BPF_MAP_TYPE_SK_STORAGE, 5.2+): a
/// kernel without task storage refuses to create a map of that type, and the whole object
/// with it, although no program it verifies ever uses the map (those paths are dead code
/// there). Socket storage takes the same definition (int key, `BPF_F_NO_PREALLOC`, no
/// entries), and unlike a hash without preallocation it does not make the verifier of
/// 5.7–6.0 warn (`WARN_ONCE` "trace type BPF program uses run-time allocation",
/// kernel/bpf/verifier.c `check_map_prog_compatibility`) about programs that only name it.
/// Errors: the object has no `.BTF` section, no `TASK_STATE` map definition in it, or one
/// whose type array other types share (a patch would change them too).
pub fn object_for(store: &StateStore, object: &'static [u8]) -> Result<Cow<'static, [u8]>, String> {
    if *store == StateStore::Task {
        return Ok(Cow::Borrowed(object));
    }
    let mut bytes = object.to_vec();
    let at = map_type_nelems_offset(&bytes, TASK_STATE_MAP)?;
    bytes[at..at + 4].copy_from_slice(&PLACEHOLDER.to_ne_bytes());
    Ok(Cow::Owned(bytes))
}

/// The map type `TASK_STATE` is created as where task storage is not used.
const PLACEHOLDER: u32 = aya::maps::MapType::SkStorage as u32;

/// File offset of the `nelems` that encodes the map type of BTF map `var` (libbpf's
/// `__uint(type, N)`: member `type`, a pointer to an `int[N]`).
fn map_type_nelems_offset(elf: &[u8], var: &str) -> Result<usize, String> {
    use object::{Object as _, ObjectSection as _};
    let file = object::File::parse(elf).map_err(|e| format!("kernel object: {e}"))?;
    let sec = file.section_by_name(".BTF").ok_or("kernel object: no .BTF section")?;
    let (base, len) = sec.file_range().ok_or("kernel object: .BTF has no file data")?;
    let (base, len) = (base as usize, len as usize);
    let btf = elf.get(base..base + len).ok_or("kernel object: .BTF out of range")?;
    Ok(base + nelems_in_btf(btf, var)?)
}

/// Little-endian-or-native u32 at `at` (BTF is in the object's byte order: native here).
fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes(s.try_into().unwrap_or_default()))
        .ok_or_else(|| "BTF: truncated".to_string())
}

/// Offset in `btf` of the map-type `nelems` of BTF map variable `var`.
fn nelems_in_btf(btf: &[u8], var: &str) -> Result<usize, String> {
    const MAGIC: u16 = 0xeb9f;
    if btf.len() < 24 || u16::from_ne_bytes([btf[0], btf[1]]) != MAGIC {
        return Err("BTF: bad header".into());
    }
    let hdr = u32_at(btf, 4)? as usize;
    let (type_off, type_len) = (u32_at(btf, 8)? as usize, u32_at(btf, 12)? as usize);
    let str_off = u32_at(btf, 16)? as usize;
    let types = hdr + type_off;
    let strs = hdr + str_off;
    let name = |off: u32| -> &[u8] {
        let s = btf.get(strs + off as usize..).unwrap_or_default();
        &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())]
    };
    // Every type's record offset, by id (ids start at 1; include/uapi/linux/btf.h).
    let mut at = vec![0usize];
    let mut p = types;
    while p < types + type_len {
        at.push(p);
        let info = u32_at(btf, p + 4)?;
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        p += 12
            + match kind {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
                k => return Err(format!("BTF: unknown kind {k}")),
            };
    }
    let kind_of = |id: u32| -> Result<(usize, u32), String> {
        let rec = *at.get(id as usize).ok_or("BTF: bad type id")?;
        Ok((rec, (u32_at(btf, rec + 4)? >> 24) & 0x1f))
    };
    // Skips typedefs and qualifiers.
    let resolve = |mut id: u32| -> Result<(usize, u32), String> {
        for _ in 0..16 {
            let (rec, kind) = kind_of(id)?;
            if !matches!(kind, 8..=11 | 18) {
                return Ok((rec, kind));
            }
            id = u32_at(btf, rec + 8)?;
        }
        Err("BTF: type chain too long".into())
    };
    for &rec in at.iter().skip(1) {
        let kind = (u32_at(btf, rec + 4)? >> 24) & 0x1f;
        if kind != 14 || name(u32_at(btf, rec)?) != var.as_bytes() {
            continue;
        }
        let (def, kind) = resolve(u32_at(btf, rec + 8)?)?;
        if kind != 4 {
            return Err(format!("BTF: {var} is not a struct"));
        }
        let vlen = (u32_at(btf, def + 4)? & 0xffff) as usize;
        for m in 0..vlen {
            let mem = def + 12 + 12 * m;
            if name(u32_at(btf, mem)?) != b"type" {
                continue;
            }
            let (ptr, kind) = resolve(u32_at(btf, mem + 4)?)?;
            if kind != 2 {
                return Err(format!("BTF: {var}.type is not a pointer"));
            }
            let (arr, kind) = resolve(u32_at(btf, ptr + 8)?)?;
            if kind != 3 {
                return Err(format!("BTF: {var}.type does not point to an array"));
            }
            // Only this member may change: the pointer and the array must have no other user
            // (BTF deduplication merges every `[i32; N]` of the object into one type).
            let id_of = |rec: usize| at.iter().position(|&r| r == rec).unwrap_or(0) as u32;
            for (what, id) in [("pointer", id_of(ptr)), ("array", id_of(arr))] {
                let users = references(btf, &at, id)?;
                if users != 1 {
                    return Err(format!("BTF: {var}.type's {what} type has {users} users, not 1"));
                }
            }
            // struct btf_array { type, index_type, nelems } after the 12-byte btf_type.
            return Ok(arr + 12 + 8);
        }
        return Err(format!("BTF: {var} has no `type` member"));
    }
    Err(format!("BTF: no map {var}"))
}

/// How many times type `id` is named by the types of `btf` (`at`: each type's record offset).
fn references(btf: &[u8], at: &[usize], id: u32) -> Result<usize, String> {
    let mut n = 0;
    for &rec in at.iter().skip(1) {
        let info = u32_at(btf, rec + 4)?;
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        // Where this kind names other types (include/uapi/linux/btf.h).
        let mut named = |off: usize| -> Result<(), String> {
            n += usize::from(u32_at(btf, off)? == id);
            Ok(())
        };
        match kind {
            2 | 8..=12 | 14 | 17 | 18 => named(rec + 8)?, // the `type` of btf_type
            3 => {
                named(rec + 12)?; // btf_array.type
                named(rec + 16)?; // btf_array.index_type
            }
            4 | 5 => (0..vlen).try_for_each(|m| named(rec + 12 + 12 * m + 4))?, // btf_member.type
            13 => {
                named(rec + 8)?; // the return type
                (0..vlen).try_for_each(|m| named(rec + 12 + 8 * m + 4))?; // btf_param.type
            }
            15 => (0..vlen).try_for_each(|m| named(rec + 12 + 12 * m))?, // btf_var_secinfo.type
            _ => {}
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_map_becomes_socket_storage_in_the_object_itself() {
        let obj = super::super::OBJECT;
        let at = map_type_nelems_offset(obj, TASK_STATE_MAP).unwrap();
        assert_eq!(
            u32::from_ne_bytes(obj[at..at + 4].try_into().unwrap()),
            aya::maps::MapType::TaskStorage as u32
        );
        let hash = object_for(&StateStore::Hash("test".into()), obj).unwrap();
        assert_eq!(u32::from_ne_bytes(hash[at..at + 4].try_into().unwrap()), PLACEHOLDER);
        assert_eq!(hash.len(), obj.len());
        let diff = obj.iter().zip(hash.iter()).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 1, "one byte of one word changes (29 -> 24)");
        assert!(matches!(object_for(&StateStore::Task, obj).unwrap(), Cow::Borrowed(_)));
        assert!(map_type_nelems_offset(obj, "NO_SUCH_MAP").is_err());
    }
}
