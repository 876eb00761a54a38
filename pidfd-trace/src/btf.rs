//! Kernel BTF reader: the running kernel's struct offsets, enum values and functions (Rust eBPF has no CO-RE).
//!
//! Format: `Documentation/bpf/btf.rst` and `include/uapi/linux/btf.h`. The type section is kept raw;
//! parsing records where each type starts (sizing every kind 1..=19 so the walk never
//! misaligns) and indexes the names we look up. Members etc. are decoded on demand.

use std::hash::{DefaultHasher, Hash, Hasher};

/// Where the running kernel publishes its BTF (the agent's `--btf` default is the same).
const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
/// Bound on type chains and anonymous-member nesting, so a cyclic (malformed) blob cannot loop.
const MAX_DEPTH: usize = 32;
/// BTF records no pointer width; the agent runs on the kernel it reads, so the host's is right.
const PTR_SIZE: u32 = size_of::<usize>() as u32;

// BTF_KIND_*
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const FLOAT: u32 = 16;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

/// Why a kernel BTF blob could not be read or lacks what the agent needs.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The blob does not parse (what was wrong).
    #[error("malformed BTF: {0}; the blob is truncated or corrupt, use the kernel's own {VMLINUX}")]
    Malformed(String),
    /// (kind, name)
    #[error("no {0} named `{1}` in kernel BTF; update the agent for this kernel version")]
    TypeNotFound(&'static str, String),
    /// "struct.path"
    #[error("no member `{0}` in kernel BTF; update the member path for this kernel version")]
    MemberNotFound(String),
    /// ("struct.path", bit offset, bit width)
    #[error("`{0}` is a {2}-bit bitfield at bit {1}; read the containing word and mask it")]
    Bitfield(String, u32, u32),
    /// ("struct.path", the path component that is not embedded)
    #[error("`{0}`: `{1}` is not an embedded struct or union; look its type up separately")]
    NotComposite(String, String),
    /// "struct.path"
    #[error("`{0}` has no size (void, function or forward declaration); fix the member path")]
    Unsized(String),
    /// "enum::enumerator"
    #[error("no enumerator `{0}` in kernel BTF; update the agent for this kernel version")]
    EnumeratorNotFound(String),
}

fn malformed(msg: impl Into<String>) -> BtfError {
    BtfError::Malformed(msg.into())
}

fn name_hash(name: &str) -> u64 {
    let mut h = DefaultHasher::new(); // fixed keys: deterministic, fine for kernel-made names
    name.hash(&mut h);
    h.finish()
}

fn read_u32(bytes: &[u8], pos: usize, big_endian: bool) -> Option<u32> {
    let b: [u8; 4] = bytes.get(pos..pos.checked_add(4)?)?.try_into().ok()?;
    Some(if big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
}

/// A type record's 3-word header (`struct btf_type`), decoded.
#[derive(Clone, Copy)]
struct Ty {
    start: usize,
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
}

/// Where a member path ends: absolute bit offset, bitfield width (0 if none) and type id.
struct Found {
    bit_offset: u32,
    bits: u32,
    type_id: u32,
}

/// The parts of a kernel BTF blob the agent reads: types by name, struct member offsets
/// and sizes, enum values and function prototypes.
pub struct Btf {
    /// The type section; parse checked that every record lies inside it.
    types: Vec<u8>,
    strings: Vec<u8>,
    big_endian: bool,
    /// Byte offset of each record in `types`, by type id (ids start at 1; [0] stands for void).
    starts: Vec<usize>,
    /// (name hash, id) of the kinds looked up by name (`STRUCT`, `UNION`, `ENUM`, `ENUM64`, `FUNC`),
    /// sorted. Cheaper to build than a map of ~67k owned strings; look-ups compare the names.
    by_name: Vec<(u64, u32)>,
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf").field("types", &(self.starts.len() - 1)).finish_non_exhaustive()
    }
}

impl Btf {
    /// Parses a raw BTF blob of either byte order, told apart by how the magic 0xeB9F reads.
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let big_endian = match bytes.get(..3) {
            Some([0x9f, 0xeb, 1]) => false,
            Some([0xeb, 0x9f, 1]) => true,
            _ => return Err(malformed("no BTF magic 0xeB9F with version 1")),
        };
        // magic u16, version u8, flags u8, then hdr_len, type_off, type_len, str_off, str_len
        // and, from 7.2 (hdr_len 32), layout_off and layout_len; the section offsets count from
        // the end of the header, whatever its length, so a longer header is skipped whole.
        let field = |i: usize| read_u32(bytes, 4 + 4 * i, big_endian).map(|v| v as usize);
        let (Some(hdr_len @ 24..), Some(type_off), Some(type_len), Some(str_off), Some(str_len)) =
            (field(0), field(1), field(2), field(3), field(4))
        else {
            return Err(malformed("truncated header"));
        };
        if hdr_len > bytes.len() {
            return Err(malformed(format!("header length {hdr_len} is past the end of the blob")));
        }
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            Some(bytes.get(start..start.checked_add(len)?)?.to_vec())
        };
        let (Some(types), Some(strings)) = (section(type_off, type_len), section(str_off, str_len)) else {
            return Err(malformed("a section lies outside the blob"));
        };
        // The layout section: one `struct btf_layout { u8 info_sz; u8 elem_sz; u16 flags; }`
        // per kind the encoder knew, indexed by kind, so kinds newer than this reader can be
        // stepped over.
        let layout: Vec<(usize, usize)> = match (hdr_len >= 32, field(5), field(6)) {
            (false, ..) | (true, _, Some(0)) => Vec::new(),
            (true, Some(off), Some(len)) => section(off, len)
                .ok_or_else(|| malformed("the layout section lies outside the blob"))?
                .chunks_exact(4)
                .map(|l| (usize::from(l[0]), usize::from(l[1])))
                .collect(),
            _ => return Err(malformed("truncated header")),
        };
        let mut btf = Btf { types, strings, big_endian, starts: vec![0], by_name: Vec::new() };
        let mut pos = 0;
        while pos < btf.types.len() {
            let id = btf.starts.len() as u32;
            btf.starts.push(pos);
            let truncated = || malformed(format!("type section truncated in type id {id}"));
            let t = btf.header(id).ok_or_else(truncated)?;
            // Words that follow the header: btf_member, btf_enum, btf_param, btf_array, ...
            pos += match t.kind {
                PTR | FWD | TYPEDEF | VOLATILE | CONST | RESTRICT | FUNC | FLOAT | TYPE_TAG => 12,
                INT | VAR | DECL_TAG => 16,
                ARRAY => 24,
                ENUM | FUNC_PROTO => 12 + 8 * t.vlen,
                STRUCT | UNION | DATASEC | ENUM64 => 12 + 12 * t.vlen,
                k => match layout.get(k as usize) {
                    Some(&(info_sz, elem_sz)) => 12 + info_sz + elem_sz * t.vlen,
                    None => return Err(malformed(format!("unknown kind {k} at type id {id}"))),
                },
            };
            if pos > btf.types.len() {
                return Err(truncated());
            }
            let name = btf.name(t.name_off);
            if matches!(t.kind, STRUCT | UNION | ENUM | ENUM64 | FUNC) && !name.is_empty() {
                let hash = name_hash(name);
                btf.by_name.push((hash, id));
            }
        }
        btf.by_name.sort_unstable(); // by hash, then id: same-named types stay in id order
        Ok(btf)
    }

    /// Byte offset of a member; `path` may be dotted ("signal.rlim") and must see through
    /// anonymous struct/union members (e.g. `task_struct` members inside anonymous unions). Errors for bitfields that are not byte aligned.
    pub fn member_offset(&self, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        let f = self.lookup(struct_name, path)?;
        match f.bit_offset % 8 {
            0 => Ok(f.bit_offset / 8),
            _ => Err(BtfError::Bitfield(format!("{struct_name}.{path}"), f.bit_offset, f.bits)),
        }
    }

    /// Size in bytes of the member's type (resolving `typedef`/`const`/`volatile`/`restrict`/`type_tag`), for sanity checks.
    /// A bitfield has one only if it is whole bytes at a byte boundary.
    pub fn member_size(&self, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        let f = self.lookup(struct_name, path)?;
        match (f.bits, f.bit_offset % 8, f.bits % 8) {
            (0, _, _) => {}
            (bits, 0, 0) => return Ok(bits / 8),
            _ => return Err(BtfError::Bitfield(format!("{struct_name}.{path}"), f.bit_offset, f.bits)),
        }
        self.size_of(f.type_id, 0)?.ok_or_else(|| BtfError::Unsized(format!("{struct_name}.{path}")))
    }

    /// Size in bytes of a named struct or union (e.g. `upid`, an array element the programs index).
    pub fn struct_size(&self, struct_name: &str) -> Result<u32, BtfError> {
        Ok(self.composite(struct_name)?.size_or_type)
    }

    /// Value of an enumerator in a named enum (`BTF_KIND_ENUM` and `ENUM64`); e.g. (`"cgroup_subsys_id"`, `"pids_cgrp_id"`).
    pub fn enum_value(&self, enum_name: &str, enumerator: &str) -> Result<i64, BtfError> {
        let mut any_enum = false;
        for t in self.named(enum_name).filter(|t| matches!(t.kind, ENUM | ENUM64)) {
            any_enum = true;
            let stride = if t.kind == ENUM { 2 } else { 3 };
            let Some(i) = (0..t.vlen).find(|&i| self.name(self.word(&t, stride * i)) == enumerator) else {
                continue;
            };
            let lo = self.word(&t, stride * i + 1);
            return Ok(match (t.kind, t.kind_flag) {
                (ENUM, true) => i64::from(lo as i32), // kind_flag marks a signed enum
                (ENUM, false) => i64::from(lo),
                // ENUM64 keeps the bits: unsigned values above i64::MAX come back negative.
                _ => ((u64::from(self.word(&t, stride * i + 2)) << 32) | u64::from(lo)) as i64,
            });
        }
        Err(if any_enum {
            BtfError::EnumeratorNotFound(format!("{enum_name}::{enumerator}"))
        } else {
            BtfError::TypeNotFound("enum", enum_name.into())
        })
    }

    /// Whether a `BTF_KIND_FUNC` with this name exists (what fentry/fexit need). A name
    /// `helper:<name>` asks instead whether the kernel has the BPF helper `bpf_<name>`
    /// (`BPF_FUNC_<name>` in `enum bpf_func_id`): the hook table uses it for hooks whose
    /// programs call a helper older kernels lack (hooks.rs `HELPER_TASK_PT_REGS`).
    pub fn has_func(&self, name: &str) -> bool {
        if let Some(helper) = name.strip_prefix("helper:") {
            return self.enum_value("bpf_func_id", &format!("BPF_FUNC_{helper}")).is_ok();
        }
        self.named(name).any(|t| t.kind == FUNC)
    }

    /// Parameter names of a `FUNC` (through its `FUNC_PROTO`), None if no such func.
    /// An unnamed parameter is "", a variadic tail "...".
    pub fn func_params(&self, name: &str) -> Option<Vec<String>> {
        let func = self.named(name).find(|t| t.kind == FUNC)?;
        let proto = self.ty(func.size_or_type).ok().filter(|p| p.kind == FUNC_PROTO)?;
        let param = |i| match (self.word(&proto, 2 * i), self.word(&proto, 2 * i + 1)) {
            (0, 0) => "...".to_owned(),
            (name_off, _) => self.name(name_off).to_owned(),
        };
        Some((0..proto.vlen).map(param).collect())
    }

    /// The NUL-terminated string at `off`; "" if out of range or not UTF-8 (kernel names are ASCII).
    fn name(&self, off: u32) -> &str {
        let tail = self.strings.get(off as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or_default()
    }

    /// Type `id`'s header; None for id 0 (void), which is never looked into.
    fn header(&self, id: u32) -> Option<Ty> {
        let start = *self.starts.get(id as usize).filter(|_| id != 0)?;
        let word = |i: usize| read_u32(&self.types, start + 4 * i, self.big_endian);
        let (name_off, info, size_or_type) = (word(0)?, word(1)?, word(2)?);
        // bits 24-30 kind, 0-23 vlen (7.2 widened both; the new bits were always 0 before).
        let (kind, vlen, kind_flag) = ((info >> 24) & 0x7f, (info & 0xff_ffff) as usize, info >> 31 == 1);
        Some(Ty { start, name_off, kind, vlen, kind_flag, size_or_type })
    }

    fn ty(&self, id: u32) -> Result<Ty, BtfError> {
        self.header(id).ok_or_else(|| malformed(format!("type id {id} is void or out of range")))
    }

    /// Word `i` after the header of `t` (parse checked it is inside the section).
    fn word(&self, t: &Ty, i: usize) -> u32 {
        read_u32(&self.types, t.start + 12 + 4 * i, self.big_endian).unwrap_or(0)
    }

    /// The indexed types (struct, union, enum, func) called `name`, in id order.
    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Ty> + 'a {
        let hash = name_hash(name);
        let start = self.by_name.partition_point(|&(h, _)| h < hash);
        self.by_name[start..]
            .iter()
            .take_while(move |&&(h, _)| h == hash)
            .filter_map(|&(_, id)| self.header(id))
            .filter(move |t| self.name(t.name_off) == name)
    }

    /// The struct or union called `name`. Several types may share a name (a `FWD`, or an empty
    /// declaration beside the real one), so prefer one with members.
    fn composite(&self, name: &str) -> Result<Ty, BtfError> {
        self.named(name)
            .filter(|t| matches!(t.kind, STRUCT | UNION))
            .min_by_key(|t| t.vlen == 0) // the first with members, else the first
            .ok_or_else(|| BtfError::TypeNotFound("struct or union", name.into()))
    }

    /// Follows `typedef`/`const`/`volatile`/`restrict`/`type_tag` to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<Ty, BtfError> {
        for _ in 0..MAX_DEPTH {
            let t = self.ty(id)?;
            match t.kind {
                TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => id = t.size_or_type,
                _ => return Ok(t),
            }
        }
        Err(malformed(format!("type chain through id {id} is too deep or cyclic")))
    }

    /// Size in bytes, or None for types without one.
    fn size_of(&self, id: u32, depth: usize) -> Result<Option<u32>, BtfError> {
        let t = self.resolve(id)?;
        Ok(match t.kind {
            INT | STRUCT | UNION | ENUM | ENUM64 | FLOAT => Some(t.size_or_type),
            PTR => Some(PTR_SIZE),
            ARRAY if depth < MAX_DEPTH => match self.size_of(self.word(&t, 0), depth + 1)? {
                Some(elem) => Some(elem.checked_mul(self.word(&t, 2)).ok_or_else(overflow)?),
                None => None,
            },
            _ => None, // void, FWD, FUNC, FUNC_PROTO, VAR, DATASEC, DECL_TAG
        })
    }

    /// Walks a dotted member path from `struct_name` through embedded structs/unions.
    fn lookup(&self, struct_name: &str, path: &str) -> Result<Found, BtfError> {
        let mut comp = self.composite(struct_name)?;
        let mut base = 0u32;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            // An empty part would match the first anonymous member.
            let found = self.find_member(&comp, part, 0)?.filter(|_| !part.is_empty());
            let f = found.ok_or_else(|| BtfError::MemberNotFound(format!("{struct_name}.{path}")))?;
            let bit_offset = base.checked_add(f.bit_offset).ok_or_else(overflow)?;
            if parts.peek().is_none() {
                return Ok(Found { bit_offset, ..f });
            }
            comp = self.resolve(f.type_id)?;
            if f.bits != 0 || !matches!(comp.kind, STRUCT | UNION) {
                return Err(BtfError::NotComposite(format!("{struct_name}.{path}"), part.into()));
            }
            base = bit_offset;
        }
        unreachable!("split yields at least one part")
    }

    /// Finds member `name` of struct/union `comp`, descending into anonymous members.
    fn find_member(&self, comp: &Ty, name: &str, depth: usize) -> Result<Option<Found>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed("anonymous members nest too deep or cyclically"));
        }
        for i in 0..comp.vlen {
            let [name_off, type_id, offset] = [0, 1, 2].map(|k| self.word(comp, 3 * i + k));
            // With `kind_flag` the offset packs `bitfield_size << 24 | bit_offset`. Without it, a
            // bitfield is an `INT` member whose encoded bit width differs from its byte size.
            let (mut bit_offset, mut bits) =
                if comp.kind_flag { (offset & 0xff_ffff, offset >> 24) } else { (offset, 0) };
            let member_name = self.name(name_off);
            if member_name == name {
                let t = self.resolve(type_id)?;
                let encoding = if t.kind == INT && !comp.kind_flag { self.word(&t, 0) } else { 0 };
                let (int_bits, int_offset) = (encoding & 0xff, (encoding >> 16) & 0xff);
                if int_bits != 0 && int_bits != t.size_or_type.saturating_mul(8) {
                    (bit_offset, bits) = (bit_offset.checked_add(int_offset).ok_or_else(overflow)?, int_bits);
                }
                return Ok(Some(Found { bit_offset, bits, type_id }));
            }
            if member_name.is_empty() {
                let inner = self.resolve(type_id)?;
                if matches!(inner.kind, STRUCT | UNION)
                    && let Some(f) = self.find_member(&inner, name, depth + 1)?
                {
                    let bit_offset = bit_offset.checked_add(f.bit_offset).ok_or_else(overflow)?;
                    return Ok(Some(Found { bit_offset, ..f }));
                }
            }
        }
        Ok(None)
    }
}

fn overflow() -> BtfError {
    malformed("a size or offset overflows u32")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Marks a kind as having kind_flag set, for `Builder::ty`.
    const KF: u32 = 0x80;

    /// Builds a BTF blob; `ty` returns the new type's id.
    struct Builder {
        words: Vec<u32>,
        strings: Vec<u8>,
        next_id: u32,
        /// Some: a 7.2-style 32-byte header with this layout section (info_sz, elem_sz per kind).
        layout: Option<Vec<(u8, u8)>>,
    }

    impl Builder {
        fn new() -> Self {
            Builder { words: Vec::new(), strings: vec![0], next_id: 1, layout: None }
        }

        fn str(&mut self, s: &str) -> u32 {
            let off = self.strings.len() as u32;
            self.strings.extend(s.bytes().chain([0]));
            if s.is_empty() { 0 } else { off }
        }

        /// `extra`: fixed trailing words (INT encoding, btf_array, VAR, DECL_TAG); `items`: the
        /// vlen entries (members, enumerators, params), each a name and then its other words.
        fn ty(
            &mut self,
            kind: u32,
            name: &str,
            size_or_type: u32,
            extra: &[u32],
            items: &[(&str, &[u32])],
        ) -> u32 {
            let info = (u32::from(kind & KF != 0) << 31) | ((kind & 0x7f) << 24) | items.len() as u32;
            let name_off = self.str(name);
            self.words.extend([name_off, info, size_or_type].iter().chain(extra));
            for (name, words) in items {
                let off = self.str(name);
                self.words.push(off);
                self.words.extend_from_slice(words);
            }
            self.next_id += 1;
            self.next_id - 1
        }

        fn build(&self, big_endian: bool) -> Vec<u8> {
            let bytes = |w: u32| if big_endian { w.to_be_bytes() } else { w.to_le_bytes() };
            let type_len = 4 * self.words.len() as u32;
            let mut out = if big_endian { vec![0xeb, 0x9f, 1, 0] } else { vec![0x9f, 0xeb, 1, 0] };
            let str_len = self.strings.len() as u32;
            let Some(layout) = &self.layout else {
                let header = [24, 0, type_len, type_len, str_len];
                out.extend(header.iter().chain(&self.words).flat_map(|&w| bytes(w)));
                out.extend(&self.strings);
                return out;
            };
            // hdr_len 32: types, then the layout section, then the strings (as the kernel lays
            // them out), each section's offset counted from the end of the header.
            let layout_len = 4 * layout.len() as u32;
            let header = [32, 0, type_len, type_len + layout_len, str_len, type_len, layout_len];
            out.extend(header.iter().chain(&self.words).flat_map(|&w| bytes(w)));
            for &(info_sz, elem_sz) in layout {
                out.extend([info_sz, elem_sz, 0, 0]);
            }
            out.extend(&self.strings);
            out
        }
    }

    fn synthetic() -> Builder {
        let mut b = Builder::new();
        let int = b.ty(INT, "int", 4, &[32], &[]);
        let uint = b.ty(INT, "unsigned int", 4, &[32], &[]);
        let long = b.ty(INT, "long", 8, &[64], &[]);
        // u64_t -> type_tag -> volatile -> const -> __u64 -> long
        let mut t = b.ty(TYPEDEF, "__u64", long, &[], &[]);
        for (kind, name) in [(CONST, ""), (VOLATILE, ""), (TYPE_TAG, "user"), (TYPEDEF, "u64_t")] {
            t = b.ty(kind, name, t, &[], &[]);
        }
        b.ty(FWD, "outer", 0, &[], &[]); // same name as the struct below, which must win
        let inner = b.ty(STRUCT, "inner", 8, &[], &[("a", &[int, 0]), ("b", &[int, 32])]);
        let anon_s = b.ty(STRUCT, "", 16, &[], &[("y", &[int, 0]), ("z", &[t, 64])]);
        let anon_u = b.ty(UNION, "", 16, &[], &[("", &[anon_s, 0]), ("w", &[int, 0])]);
        let ptr = b.ty(PTR, "", inner, &[], &[]);
        let arr = b.ty(ARRAY, "", 0, &[int, int, 4], &[]);
        let bf = |bits: u32, off: u32| (bits << 24) | off;
        b.ty(
            STRUCT | KF,
            "outer",
            80,
            &[],
            &[
                ("x", &[int, 0]),
                ("", &[anon_u, 64]),
                ("flag", &[uint, bf(3, 192)]),
                ("mode", &[uint, bf(5, 195)]),
                ("byte", &[uint, bf(8, 200)]),
                ("in", &[inner, 256]),
                ("val", &[t, 320]),
                ("p", &[ptr, 384]),
                ("arr", &[arr, 448]),
            ],
        );
        // Old-style bitfields (no kind_flag): the INT's encoding carries the bit width.
        let (nib, oct) = (b.ty(INT, "", 4, &[4], &[]), b.ty(INT, "", 4, &[8], &[]));
        b.ty(STRUCT, "old", 4, &[], &[("nib", &[nib, 4]), ("oct", &[oct, 8])]);
        b.ty(ENUM | KF, "small", 4, &[], &[("S0", &[0]), ("NEG", &[-2i32 as u32])]);
        b.ty(ENUM, "uns", 4, &[], &[("BIG", &[u32::MAX])]);
        b.ty(ENUM64, "wide", 8, &[], &[("HUGE", &[5, 1 << 8]), ("ALL", &[!0, !0])]);
        let proto = b.ty(FUNC_PROTO, "", int, &[], &[("a", &[int]), ("b", &[long])]);
        let foo = b.ty(FUNC, "foo", proto, &[], &[]);
        let vproto = b.ty(FUNC_PROTO, "", int, &[], &[("fmt", &[ptr]), ("", &[0])]);
        b.ty(FUNC, "vf", vproto, &[], &[]);
        let var = b.ty(VAR, "gv", int, &[1], &[]);
        b.ty(DATASEC, ".data", 4, &[], &[("", &[var, 4])]); // one btf_var_secinfo {0, var, 4}
        b.ty(FLOAT, "double", 8, &[], &[]);
        b.ty(DECL_TAG, "tag", foo, &[!0], &[]);
        b.ty(RESTRICT, "", ptr, &[], &[]);
        b.ty(STRUCT, "last", 4, &[], &[("q", &[int, 0])]); // read right only if nothing misaligned
        b
    }

    fn check_synthetic(btf: &Btf) {
        let off = |p| btf.member_offset("outer", p).unwrap();
        let paths = ["x", "y", "z", "w", "in.b", "val", "p", "arr", "flag", "byte"];
        assert_eq!(paths.map(off), [0, 8, 16, 8, 36, 40, 48, 56, 24, 25]);
        let size = |p| btf.member_size("outer", p).unwrap();
        assert_eq!(["z", "val", "in", "p", "arr", "byte"].map(size), [8, 8, 8, 8, 16, 1]);
        let err = |s, p| btf.member_offset(s, p).unwrap_err();
        assert!(matches!(btf.member_size("outer", "flag"), Err(BtfError::Bitfield(_, 192, 3))));
        assert!(matches!(err("outer", "mode"), BtfError::Bitfield(_, 195, 5)));
        assert!(matches!(err("old", "nib"), BtfError::Bitfield(_, 4, 4)));
        assert_eq!(
            (btf.member_offset("old", "oct").unwrap(), btf.member_size("old", "oct").unwrap()),
            (1, 1)
        );
        for p in ["p.a", "arr.a", "x.y", "flag.a"] {
            assert!(matches!(err("outer", p), BtfError::NotComposite(..)), "{p}");
        }
        for p in ["nope", "", "in.", ".x", "in.c"] {
            assert!(matches!(err("outer", p), BtfError::MemberNotFound(_)), "{p}");
        }
        assert_eq!(btf.struct_size("outer").unwrap(), 80); // not the FWD
        assert!(matches!(btf.struct_size("int"), Err(BtfError::TypeNotFound(..))));
        assert_eq!((btf.member_offset("last", "q").unwrap(), btf.struct_size("last").unwrap()), (0, 4));
        let value = |e, n| btf.enum_value(e, n).unwrap();
        assert_eq!([value("small", "NEG"), value("uns", "BIG")], [-2, 0xffff_ffff]);
        assert_eq!([value("wide", "HUGE"), value("wide", "ALL")], [(1 << 40) | 5, -1]);
        assert!(matches!(btf.enum_value("wide", "X"), Err(BtfError::EnumeratorNotFound(_))));
        assert!(matches!(btf.enum_value("outer", "x"), Err(BtfError::TypeNotFound(..))));
        assert!(btf.has_func("foo") && !btf.has_func("outer") && !btf.has_func("gv"));
        assert_eq!(btf.func_params("foo").unwrap(), ["a", "b"]);
        assert_eq!(btf.func_params("vf").unwrap(), ["fmt", "..."]);
        assert_eq!(btf.func_params("inner"), None);
    }

    #[test]
    fn synthetic_little_and_big_endian() {
        let b = synthetic();
        check_synthetic(&Btf::parse(&b.build(false)).unwrap());
        check_synthetic(&Btf::parse(&b.build(true)).unwrap());
    }

    /// The 7.2 header (hdr_len 32, layout_off/layout_len) with a layout section, and a kind
    /// newer than this reader (21, sized by the layout: 4 info bytes, 8 per vlen element)
    /// before the last type: every look-up still lands right.
    #[test]
    fn header_with_layout_section_and_a_new_kind() {
        let mut b = synthetic();
        let last = b.words.len() - 6; // "last" is a 1-member struct: 3 + 3 words
        let tail: Vec<u32> = b.words.split_off(last);
        // kind 21, vlen 2: header, 1 info word, 2 × 2 words
        b.words.extend([0, (21 << 24) | 2, 0, 7, 1, 2, 3, 4]);
        b.words.extend(tail);
        let mut layout: Vec<(u8, u8)> = vec![(0, 0); 22];
        layout[21] = (4, 8);
        b.layout = Some(layout);
        for big_endian in [false, true] {
            let blob = b.build(big_endian);
            assert_eq!(blob[4..8], if big_endian { 32u32.to_be_bytes() } else { 32u32.to_le_bytes() });
            check_synthetic(&Btf::parse(&blob).unwrap());
        }
        // The same kind without a layout entry for it cannot be stepped over.
        b.layout = Some(vec![(0, 0); 20]);
        assert!(matches!(Btf::parse(&b.build(false)), Err(BtfError::Malformed(_))));
        // hdr_len 32 with an empty layout section reads like the 24-byte header.
        let plain = synthetic();
        let mut blob = plain.build(false);
        blob[4] = 32;
        blob.splice(24..24, [0u8; 8]).for_each(drop); // layout_off 0, layout_len 0
        check_synthetic(&Btf::parse(&blob).unwrap());
        // A layout section outside the blob is malformed.
        let mut bad = blob.clone();
        bad[28..32].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        assert!(matches!(Btf::parse(&bad), Err(BtfError::Malformed(_))));
    }

    #[test]
    fn malformed_input_errors_without_panicking() {
        let blob = synthetic().build(false);
        for len in 0..blob.len() {
            assert!(Btf::parse(&blob[..len]).is_err(), "prefix of {len} bytes parsed");
        }
        let mut b = Builder::new();
        b.ty(20, "x", 0, &[], &[]);
        assert!(matches!(Btf::parse(&b.build(false)), Err(BtfError::Malformed(_))));
        // A typedef cycle and dangling ids must error at look-up, not loop or panic.
        let mut b = Builder::new();
        b.ty(TYPEDEF, "a", 2, &[], &[]);
        b.ty(TYPEDEF, "b", 1, &[], &[]);
        b.ty(STRUCT, "s", 8, &[], &[("m", &[1, 0]), ("d", &[99, 0]), ("", &[98, 32])]);
        let btf = Btf::parse(&b.build(false)).unwrap();
        assert!(btf.member_size("s", "m").is_err() && btf.member_size("s", "d").is_err());
        assert!(matches!(btf.member_offset("s", "zz"), Err(BtfError::Malformed(_))));
        // Flip each byte of a valid blob: any outcome but a panic (or a hang) is fine.
        for i in 0..blob.len() {
            let mut b = blob.clone();
            b[i] ^= 0xff;
            if let Ok(btf) = Btf::parse(&b) {
                let _ = (btf.member_offset("outer", "z"), btf.member_size("outer", "arr"));
                let _ = (btf.enum_value("wide", "ALL"), btf.func_params("vf"));
            }
        }
    }

    #[test]
    fn real_vmlinux() {
        if !std::path::Path::new(VMLINUX).exists() {
            println!("skipped: {VMLINUX} is absent (kernel without CONFIG_DEBUG_INFO_BTF)");
            return;
        }
        let start = std::time::Instant::now();
        let btf = Btf::parse(&std::fs::read(VMLINUX).unwrap()).unwrap();
        println!("read and parsed {VMLINUX}: {btf:?} in {:?}", start.elapsed());
        let off = |s, p| btf.member_offset(s, p).unwrap();
        let size = |s, p| btf.member_size(s, p).unwrap();
        assert_eq!(off("task_struct", "tgid"), off("task_struct", "pid") + 4);
        assert_eq!(size("task_struct", "pid"), 4);
        assert!(off("task_struct", "cgroups") < btf.struct_size("task_struct").unwrap());
        assert_eq!(size("task_struct", "cgroups"), PTR_SIZE);
        assert_eq!(off("css_set", "subsys"), 0);
        assert!(size("css_set", "subsys") >= 8 * PTR_SIZE); // an array: one per subsystem
        assert_eq!((size("pids_cgroup", "counter"), size("pids_cgroup", "limit")), (8, 8));
        btf.enum_value("cgroup_subsys_id", "pids_cgrp_id").unwrap();
        for f in ["copy_process", "kernel_clone", "pidfs_alloc_file", "cgroup_can_fork", "anon_inode_getfile"]
        {
            assert!(btf.has_func(f), "{f}");
        }
        assert!(!btf.has_func("pidfd_create"), "inlined on 6.18");
        assert_eq!(off("kernel_clone_args", "flags"), 0);
        // Anonymous unions (struct file; sk_buff nests three deep) and a dotted path.
        assert_eq!(size("file", "f_path"), 2 * PTR_SIZE);
        assert!(off("file", "f_path") > 0 && off("sk_buff", "csum_offset") > 0);
        assert_eq!(
            off("task_struct", "se.exec_start"),
            off("task_struct", "se") + off("sched_entity", "exec_start")
        );
        assert!(matches!(btf.member_offset("task_struct", "signal.rlim"), Err(BtfError::NotComposite(..))));
        assert_eq!(btf.func_params("pidfs_alloc_file").unwrap(), ["pid", "flags"]);
    }
}
