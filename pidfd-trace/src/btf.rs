//! Kernel BTF reader: struct member offsets, enum values and function presence from the running kernel's BTF, standing in for the CO-RE relocations Rust eBPF lacks.
//!
//! Format: the kernel's Documentation/bpf/btf.rst and include/uapi/linux/btf.h. Only the type
//! and string sections are read; every kind 1..=19 is decoded so the walk never misaligns.

use std::hash::{DefaultHasher, Hash, Hasher};

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// Bound on typedef/modifier chains and anonymous-member nesting so a cyclic (malformed) blob
/// cannot recurse forever; real kernels need a handful of levels.
const MAX_DEPTH: usize = 32;
/// BTF records no pointer width; the agent runs on the kernel it reads, so the host's is right.
const PTR_SIZE: u32 = std::mem::size_of::<usize>() as u32;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "kernel BTF not found at {VMLINUX}: this kernel was built without CONFIG_DEBUG_INFO_BTF; use a kernel with BTF"
    )]
    NotFound,
    #[error("cannot read kernel BTF at {VMLINUX}: {0}; check that sysfs is mounted and readable")]
    Read(#[source] std::io::Error),
    #[error("malformed BTF: {0}; the blob is truncated or corrupt, use the kernel's own {VMLINUX}")]
    Malformed(String),
    #[error(
        "no {kind} named `{name}` in kernel BTF: this kernel lacks it; update the agent for this kernel version"
    )]
    TypeNotFound { kind: &'static str, name: String },
    #[error(
        "`{ty}` has no member `{path}` in kernel BTF: the kernel layout changed; update the member path"
    )]
    MemberNotFound { ty: String, path: String },
    #[error(
        "`{ty}.{path}` is a {bits}-bit bitfield at bit {bit_offset}, not byte addressable; read the containing word and mask instead"
    )]
    Bitfield {
        ty: String,
        path: String,
        bit_offset: u32,
        bits: u32,
    },
    #[error(
        "`{ty}.{path}`: `{component}` is not an embedded struct or union; look up the pointed-to type separately"
    )]
    NotComposite {
        ty: String,
        path: String,
        component: String,
    },
    #[error(
        "`{ty}.{path}` has no fixed size (void, function or forward declaration); check the member path"
    )]
    Unsized { ty: String, path: String },
    #[error(
        "enum `{name}` has no enumerator `{enumerator}` in kernel BTF: the kernel changed it; update the agent for this kernel version"
    )]
    EnumeratorNotFound { name: String, enumerator: String },
}

fn name_hash(name: &str) -> u64 {
    let mut h = DefaultHasher::new(); // fixed keys: deterministic, fine for trusted names
    name.hash(&mut h);
    h.finish()
}

fn malformed(msg: impl Into<String>) -> BtfError {
    BtfError::Malformed(msg.into())
}

/// One struct/union member as stored: `offset` is raw (see `Btf::find_member`).
struct Member {
    name_off: u32,
    type_id: u32,
    offset: u32,
}

/// The decoded kinds we look at; VAR, DATASEC and DECL_TAG are skipped as `Other`.
enum Kind {
    Int {
        size: u32,
        encoding: u32,
    },
    Ptr,
    Array {
        elem: u32,
        nelems: u32,
    },
    Composite {
        size: u32,
        bitfields: bool,
        members: Vec<Member>,
    },
    Enum {
        size: u32,
        values: Vec<(u32, i64)>,
    },
    Fwd,
    /// TYPEDEF, VOLATILE, CONST, RESTRICT and TYPE_TAG: all just point at another type.
    Modifier(u32),
    Func(u32),
    FuncProto(Vec<(u32, u32)>),
    Float(u32),
    Other,
}

struct Type {
    name_off: u32,
    kind: Kind,
}

/// Where a member path ends up: absolute bit offset, bitfield width (0 if none), type id.
struct Found {
    bit_offset: u32,
    bits: u32,
    type_id: u32,
}

/// Parsed kernel BTF. Type id N is `types[N]`; id 0 (void) is a placeholder.
pub struct Btf {
    strings: Vec<u8>,
    types: Vec<Type>,
    /// (hash of name, id) for the kinds looked up by name (STRUCT, UNION, ENUM, ENUM64, FUNC),
    /// sorted. Cheaper to build than a map of owned strings (~67k names on vmlinux); hash
    /// collisions are filtered out at look-up by comparing the names themselves.
    by_name: Vec<(u64, u32)>,
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf")
            .field("types", &(self.types.len() - 1))
            .finish_non_exhaustive()
    }
}

/// Bounds-checked u32 reader in the blob's byte order.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    big_endian: bool,
}

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, BtfError> {
        let bytes: [u8; 4] = self
            .data
            .get(self.pos..self.pos + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed(format!("type section truncated at byte {}", self.pos)))?;
        self.pos += 4;
        Ok(if self.big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        })
    }
}

impl Btf {
    /// Reads and parses the running kernel's BTF from /sys/kernel/btf/vmlinux.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        match std::fs::read(VMLINUX) {
            Ok(bytes) => Self::parse(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BtfError::NotFound),
            Err(e) => Err(BtfError::Read(e)),
        }
    }

    /// Parses a raw BTF blob (either byte order, told apart by how the magic reads).
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let head = bytes
            .get(..HEADER_LEN)
            .ok_or_else(|| malformed("shorter than the header"))?;
        let big_endian = match [head[0], head[1]] {
            m if m == MAGIC.to_le_bytes() => false,
            m if m == MAGIC.to_be_bytes() => true,
            m => return Err(malformed(format!("bad magic {m:02x?}"))),
        };
        if head[2] != 1 {
            return Err(malformed(format!("unsupported version {}", head[2])));
        }
        let mut r = Reader {
            data: head,
            pos: 4,
            big_endian,
        };
        let hdr_len = r.u32()? as usize;
        let [type_off, type_len, str_off, str_len] = [r.u32()?, r.u32()?, r.u32()?, r.u32()?];
        // Section offsets count from the end of the header, whose length the header gives.
        let section = |off: u32, len: u32, what: &str| {
            let start = hdr_len.checked_add(off as usize);
            start
                .and_then(|s| bytes.get(s..s.checked_add(len as usize)?))
                .ok_or_else(|| malformed(format!("{what} section lies outside the blob")))
        };
        if hdr_len < HEADER_LEN {
            return Err(malformed(format!("header length {hdr_len} < {HEADER_LEN}")));
        }
        let type_data = section(type_off, type_len, "type")?;
        let strings = section(str_off, str_len, "string")?.to_vec();

        let check_name = |off: u32| match (off as usize) < strings.len() || off == 0 {
            true => Ok(off),
            false => Err(malformed(format!(
                "name offset {off} outside the string section"
            ))),
        };
        let mut r = Reader {
            data: type_data,
            pos: 0,
            big_endian,
        };
        let mut types = vec![Type {
            name_off: 0,
            kind: Kind::Other,
        }];
        while r.pos < type_data.len() {
            let name_off = check_name(r.u32()?)?;
            let info = r.u32()?;
            let size_or_type = r.u32()?;
            let vlen = info & 0xffff;
            let kind_flag = info >> 31 == 1;
            let kind = match (info >> 24) & 0x1f {
                KIND_INT => Kind::Int {
                    size: size_or_type,
                    encoding: r.u32()?,
                },
                KIND_PTR => Kind::Ptr,
                KIND_ARRAY => {
                    let [elem, _index_type, nelems] = [r.u32()?, r.u32()?, r.u32()?];
                    Kind::Array { elem, nelems }
                }
                KIND_STRUCT | KIND_UNION => {
                    let members = (0..vlen)
                        .map(|_| {
                            Ok(Member {
                                name_off: check_name(r.u32()?)?,
                                type_id: r.u32()?,
                                offset: r.u32()?,
                            })
                        })
                        .collect::<Result<_, BtfError>>()?;
                    Kind::Composite {
                        size: size_or_type,
                        bitfields: kind_flag,
                        members,
                    }
                }
                KIND_ENUM => {
                    // kind_flag marks a signed enum; values are stored as 32 bits either way.
                    let values = (0..vlen)
                        .map(|_| {
                            let (name, val) = (check_name(r.u32()?)?, r.u32()?);
                            Ok((
                                name,
                                if kind_flag {
                                    val as i32 as i64
                                } else {
                                    val as i64
                                },
                            ))
                        })
                        .collect::<Result<_, BtfError>>()?;
                    Kind::Enum {
                        size: size_or_type,
                        values,
                    }
                }
                KIND_ENUM64 => {
                    // Unsigned values above i64::MAX come back wrapped (the bits are kept).
                    let values = (0..vlen)
                        .map(|_| {
                            let (name, lo, hi) = (check_name(r.u32()?)?, r.u32()?, r.u32()?);
                            Ok((name, ((u64::from(hi) << 32) | u64::from(lo)) as i64))
                        })
                        .collect::<Result<_, BtfError>>()?;
                    Kind::Enum {
                        size: size_or_type,
                        values,
                    }
                }
                KIND_FWD => Kind::Fwd,
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Kind::Modifier(size_or_type)
                }
                KIND_FUNC => Kind::Func(size_or_type),
                KIND_FUNC_PROTO => {
                    let params = (0..vlen)
                        .map(|_| Ok((check_name(r.u32()?)?, r.u32()?)))
                        .collect::<Result<_, BtfError>>()?;
                    Kind::FuncProto(params)
                }
                KIND_VAR | KIND_DECL_TAG => {
                    r.u32()?; // linkage / component_idx
                    Kind::Other
                }
                KIND_DATASEC => {
                    for _ in 0..vlen * 3 {
                        r.u32()?; // btf_var_secinfo: type, offset, size
                    }
                    Kind::Other
                }
                KIND_FLOAT => Kind::Float(size_or_type),
                k => {
                    return Err(malformed(format!(
                        "unknown kind {k} at type id {}",
                        types.len()
                    )));
                }
            };
            types.push(Type { name_off, kind });
        }

        let mut btf = Btf {
            strings,
            types,
            by_name: Vec::new(),
        };
        let mut by_name: Vec<(u64, u32)> = (btf.types.iter().enumerate())
            .filter(|(_, t)| {
                matches!(
                    t.kind,
                    Kind::Composite { .. } | Kind::Enum { .. } | Kind::Func(_)
                )
            })
            .map(|(id, t)| (btf.name(t.name_off), id as u32))
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, id)| (name_hash(name), id))
            .collect();
        by_name.sort_unstable(); // by hash, then id: same-named types stay in id order
        btf.by_name = by_name;
        Ok(btf)
    }

    /// Byte offset of a member; `path` may be dotted ("signal.rlim") and must see through
    /// anonymous struct/union members (e.g. task_struct members inside anonymous unions). Errors for bitfields that are not byte aligned.
    pub fn member_offset(&self, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        let f = self.lookup(struct_name, path)?;
        if f.bit_offset % 8 != 0 {
            return Err(self.bitfield_error(struct_name, path, &f));
        }
        Ok(f.bit_offset / 8)
    }

    /// Size in bytes of the member's type (resolving typedef/const/volatile/restrict/type_tag), for sanity checks.
    /// A bitfield has a size only when it is whole, byte-aligned bytes.
    pub fn member_size(&self, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        let f = self.lookup(struct_name, path)?;
        if f.bits != 0 {
            return match f.bit_offset % 8 == 0 && f.bits % 8 == 0 {
                true => Ok(f.bits / 8),
                false => Err(self.bitfield_error(struct_name, path, &f)),
            };
        }
        let no_size = || BtfError::Unsized {
            ty: struct_name.into(),
            path: path.into(),
        };
        self.size_of(f.type_id, 0)?.ok_or_else(no_size)
    }

    pub fn struct_size(&self, struct_name: &str) -> Result<u32, BtfError> {
        match self.get(self.composite(struct_name)?)?.kind {
            Kind::Composite { size, .. } => Ok(size),
            _ => unreachable!("composite() returns only struct/union ids"),
        }
    }

    /// Value of an enumerator in a named enum (BTF_KIND_ENUM and ENUM64); e.g. ("cgroup_subsys_id", "pids_cgrp_id").
    pub fn enum_value(&self, enum_name: &str, enumerator: &str) -> Result<i64, BtfError> {
        let mut enums = self.named(enum_name).filter_map(|t| match &t.kind {
            Kind::Enum { values, .. } => Some(values),
            _ => None,
        });
        let first = enums.next().ok_or_else(|| BtfError::TypeNotFound {
            kind: "enum",
            name: enum_name.into(),
        })?;
        std::iter::once(first)
            .chain(enums)
            .flat_map(|values| values.iter())
            .find(|(name_off, _)| self.name(*name_off) == enumerator)
            .map(|&(_, value)| value)
            .ok_or_else(|| BtfError::EnumeratorNotFound {
                name: enum_name.into(),
                enumerator: enumerator.into(),
            })
    }

    /// Whether a BTF_KIND_FUNC with this name exists (what fentry/fexit need).
    pub fn has_func(&self, name: &str) -> bool {
        self.named(name).any(|t| matches!(t.kind, Kind::Func(_)))
    }

    /// Parameter names of a FUNC (through its FUNC_PROTO), None if no such func.
    /// Unnamed parameters are ""; a variadic tail is "...".
    pub fn func_params(&self, name: &str) -> Option<Vec<String>> {
        let proto = self.named(name).find_map(|t| match t.kind {
            Kind::Func(proto) => Some(proto),
            _ => None,
        })?;
        let Kind::FuncProto(params) = &self.get(proto).ok()?.kind else {
            return None;
        };
        let name_of = |&(name_off, type_id): &(u32, u32)| match (name_off, type_id) {
            (0, 0) => "...".to_owned(),
            _ => self.name(name_off).to_owned(),
        };
        Some(params.iter().map(name_of).collect())
    }

    /// The NUL-terminated string at `off`; "" if out of range or not UTF-8 (kernel names are ASCII).
    fn name(&self, off: u32) -> &str {
        let tail = self.strings.get(off as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or_default()
    }

    /// Ids of the indexed types called `name`, in id order.
    fn ids<'a>(&'a self, name: &'a str) -> impl Iterator<Item = u32> + 'a {
        let hash = name_hash(name);
        let start = self.by_name.partition_point(|&(h, _)| h < hash);
        self.by_name[start..]
            .iter()
            .take_while(move |&&(h, _)| h == hash)
            .map(|&(_, id)| id)
            .filter(move |&id| self.name(self.types[id as usize].name_off) == name)
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Type> + 'a {
        self.ids(name).map(|id| &self.types[id as usize])
    }

    fn get(&self, id: u32) -> Result<&Type, BtfError> {
        self.types
            .get(id as usize)
            .ok_or_else(|| malformed(format!("type id {id} out of range")))
    }

    /// The struct or union called `name`. Several types may share a name (a FWD, or an empty
    /// declaration next to the real one), so prefer one with members.
    fn composite(&self, name: &str) -> Result<u32, BtfError> {
        let composites = || {
            self.ids(name)
                .filter(|&id| matches!(self.types[id as usize].kind, Kind::Composite { .. }))
        };
        let has_members = |&id: &u32| matches!(&self.types[id as usize].kind, Kind::Composite { members, .. } if !members.is_empty());
        composites()
            .find(has_members)
            .or_else(|| composites().next())
            .ok_or_else(|| BtfError::TypeNotFound {
                kind: "struct or union",
                name: name.into(),
            })
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying type id.
    fn resolve(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            match self.get(id)?.kind {
                Kind::Modifier(next) => id = next,
                _ => return Ok(id),
            }
        }
        Err(malformed(format!(
            "type chain at id {id} is too deep or cyclic"
        )))
    }

    /// Size in bytes, or None for types without one (void, FWD, FUNC, FUNC_PROTO, VAR, ...).
    fn size_of(&self, id: u32, depth: usize) -> Result<Option<u32>, BtfError> {
        if id == 0 || depth > MAX_DEPTH {
            return Ok(None);
        }
        Ok(match self.get(self.resolve(id)?)?.kind {
            Kind::Int { size, .. }
            | Kind::Composite { size, .. }
            | Kind::Enum { size, .. }
            | Kind::Float(size) => Some(size),
            Kind::Ptr => Some(PTR_SIZE),
            Kind::Array { elem, nelems } => match self.size_of(elem, depth + 1)? {
                Some(s) => Some(
                    s.checked_mul(nelems)
                        .ok_or_else(|| malformed("array size overflows u32"))?,
                ),
                None => None,
            },
            _ => None,
        })
    }

    /// Walks a dotted member path from `struct_name`, through embedded structs/unions only.
    fn lookup(&self, struct_name: &str, path: &str) -> Result<Found, BtfError> {
        let mut comp = self.composite(struct_name)?;
        let mut base = 0u32;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let not_found = || BtfError::MemberNotFound {
                ty: struct_name.into(),
                path: path.into(),
            };
            // An empty component would match the first anonymous member.
            let f = match part.is_empty() {
                true => return Err(not_found()),
                false => self.find_member(comp, part, 0)?.ok_or_else(not_found)?,
            };
            let bit_offset = base
                .checked_add(f.bit_offset)
                .ok_or_else(|| malformed("member offset overflows u32"))?;
            if parts.peek().is_none() {
                return Ok(Found { bit_offset, ..f });
            }
            comp = self.resolve(f.type_id)?;
            if f.bits != 0 || !matches!(self.get(comp)?.kind, Kind::Composite { .. }) {
                return Err(BtfError::NotComposite {
                    ty: struct_name.into(),
                    path: path.into(),
                    component: part.into(),
                });
            }
            base = bit_offset;
        }
        unreachable!("split() yields at least one part")
    }

    /// Finds `name` among the members of composite `id`, descending into anonymous members.
    fn find_member(&self, id: u32, name: &str, depth: usize) -> Result<Option<Found>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed(format!(
                "anonymous members nest too deep at type id {id}"
            )));
        }
        let Kind::Composite {
            bitfields, members, ..
        } = &self.get(id)?.kind
        else {
            return Ok(None);
        };
        for m in members {
            // With kind_flag the offset packs (bitfield_size << 24 | bit_offset); without it the
            // offset is plain bits and a bitfield shows as an INT whose bit width is not its size.
            let (mut bit_offset, mut bits) = match bitfields {
                true => (m.offset & 0xff_ffff, m.offset >> 24),
                false => (m.offset, 0),
            };
            let member_name = self.name(m.name_off);
            if member_name == name {
                if let (false, Kind::Int { size, encoding }) =
                    (bitfields, &self.get(self.resolve(m.type_id)?)?.kind)
                {
                    let (int_bits, int_offset) = (encoding & 0xff, (encoding >> 16) & 0xff);
                    if int_offset != 0 || int_bits != size.saturating_mul(8) {
                        (bit_offset, bits) = (bit_offset.saturating_add(int_offset), int_bits);
                    }
                }
                return Ok(Some(Found {
                    bit_offset,
                    bits,
                    type_id: m.type_id,
                }));
            }
            if member_name.is_empty() {
                if let Some(f) = self.find_member(self.resolve(m.type_id)?, name, depth + 1)? {
                    let bit_offset = bit_offset
                        .checked_add(f.bit_offset)
                        .ok_or_else(|| malformed("member offset overflows u32"))?;
                    return Ok(Some(Found { bit_offset, ..f }));
                }
            }
        }
        Ok(None)
    }

    fn bitfield_error(&self, struct_name: &str, path: &str, f: &Found) -> BtfError {
        BtfError::Bitfield {
            ty: struct_name.into(),
            path: path.into(),
            bit_offset: f.bit_offset,
            bits: f.bits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob type by type; each `ty` call returns the new type's id.
    struct Builder {
        types: Vec<u32>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn ty(
            &mut self,
            name: &str,
            kind: u32,
            vlen: u32,
            kind_flag: bool,
            size_or_type: u32,
            extra: &[u32],
        ) -> u32 {
            let name_off = self.s(name);
            let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
            self.types.extend([name_off, info, size_or_type]);
            self.types.extend_from_slice(extra);
            self.next_id += 1;
            self.next_id - 1
        }
        /// STRUCT/UNION/ENUM/ENUM64/FUNC_PROTO: `items` are (name, words...) with the name first.
        fn list(
            &mut self,
            name: &str,
            kind: u32,
            kf: bool,
            size: u32,
            items: &[(&str, &[u32])],
        ) -> u32 {
            let mut extra = Vec::new();
            for (n, words) in items {
                extra.push(self.s(n));
                extra.extend_from_slice(words);
            }
            self.ty(name, kind, items.len() as u32, kf, size, &extra)
        }
        fn build(&self, big_endian: bool) -> Vec<u8> {
            let word = |w: u32| {
                if big_endian {
                    w.to_be_bytes()
                } else {
                    w.to_le_bytes()
                }
            };
            let type_len = self.types.len() as u32 * 4;
            let magic = if big_endian {
                MAGIC.to_be_bytes()
            } else {
                MAGIC.to_le_bytes()
            };
            let mut out = vec![magic[0], magic[1], 1, 0];
            for w in [
                HEADER_LEN as u32,
                0,
                type_len,
                type_len,
                self.strings.len() as u32,
            ] {
                out.extend(word(w));
            }
            self.types.iter().for_each(|&w| out.extend(word(w)));
            out.extend(&self.strings);
            out
        }
    }

    fn synthetic() -> Builder {
        let mut b = Builder::new();
        let int = b.ty("int", KIND_INT, 0, false, 4, &[32]);
        let uint = b.ty("unsigned int", KIND_INT, 0, false, 4, &[32]);
        let long = b.ty("long", KIND_INT, 0, false, 8, &[64]);
        // u64_t -> type_tag -> volatile -> const -> __u64 -> long
        let t = b.ty("__u64", KIND_TYPEDEF, 0, false, long, &[]);
        let t = b.ty("", KIND_CONST, 0, false, t, &[]);
        let t = b.ty("", KIND_VOLATILE, 0, false, t, &[]);
        let t = b.ty("user", KIND_TYPE_TAG, 0, false, t, &[]);
        let u64_t = b.ty("u64_t", KIND_TYPEDEF, 0, false, t, &[]);
        b.ty("outer", KIND_FWD, 0, false, 0, &[]); // same name as the struct below
        let inner = b.list(
            "inner",
            KIND_STRUCT,
            false,
            8,
            &[("a", &[int, 0]), ("b", &[int, 32])],
        );
        let anon_s = b.list(
            "",
            KIND_STRUCT,
            false,
            16,
            &[("y", &[int, 0]), ("z", &[u64_t, 64])],
        );
        let anon_u = b.list(
            "",
            KIND_UNION,
            false,
            16,
            &[("", &[anon_s, 0]), ("w", &[int, 0])],
        );
        let ptr = b.ty("", KIND_PTR, 0, false, inner, &[]);
        let arr = b.ty("", KIND_ARRAY, 0, false, 0, &[int, int, 4]);
        let bf = |bits: u32, off: u32| (bits << 24) | off;
        #[rustfmt::skip]
        b.list("outer", KIND_STRUCT, true, 80, &[
            ("x", &[int, 0]), ("", &[anon_u, 64]),
            ("flag", &[uint, bf(3, 192)]), ("mode", &[uint, bf(5, 195)]), ("byte", &[uint, bf(8, 200)]),
            ("in", &[inner, 256]), ("val", &[u64_t, 320]), ("p", &[ptr, 384]), ("arr", &[arr, 448]),
        ]);
        // Old-style bitfields (no kind_flag): the INT's encoding carries the bit width.
        let nib = b.ty("", KIND_INT, 0, false, 4, &[4]);
        let oct = b.ty("", KIND_INT, 0, false, 4, &[8]);
        b.list(
            "old",
            KIND_STRUCT,
            false,
            4,
            &[("nib", &[nib, 4]), ("oct", &[oct, 8])],
        );
        b.list(
            "small",
            KIND_ENUM,
            true,
            4,
            &[("S0", &[0]), ("NEG", &[-2i32 as u32])],
        );
        b.list("uns", KIND_ENUM, false, 4, &[("BIG", &[u32::MAX])]);
        b.list(
            "wide",
            KIND_ENUM64,
            false,
            8,
            &[("HUGE", &[5, 1 << 8]), ("ALL", &[u32::MAX, u32::MAX])],
        );
        let proto = b.list(
            "",
            KIND_FUNC_PROTO,
            false,
            int,
            &[("a", &[int]), ("b", &[long])],
        );
        let foo = b.ty("foo", KIND_FUNC, 0, false, proto, &[]);
        let vproto = b.list(
            "",
            KIND_FUNC_PROTO,
            false,
            int,
            &[("fmt", &[ptr]), ("", &[0])],
        );
        b.ty("vf", KIND_FUNC, 0, false, vproto, &[]);
        let var = b.ty("gv", KIND_VAR, 0, false, int, &[1]);
        b.ty(".data", KIND_DATASEC, 1, false, 4, &[var, 0, 4]);
        b.ty("double", KIND_FLOAT, 0, false, 8, &[]);
        b.ty("tag", KIND_DECL_TAG, 0, false, foo, &[u32::MAX]);
        b.ty("r", KIND_RESTRICT, 0, false, ptr, &[]);
        b.list("last", KIND_STRUCT, false, 4, &[("q", &[int, 0])]); // proves nothing misaligned
        b
    }

    fn check_synthetic(btf: &Btf) {
        let off = |p| btf.member_offset("outer", p).unwrap();
        assert_eq!(
            [
                off("x"),
                off("y"),
                off("z"),
                off("w"),
                off("in.b"),
                off("val"),
                off("p"),
                off("arr")
            ],
            [0, 8, 16, 8, 36, 40, 48, 56]
        );
        let size = |p| btf.member_size("outer", p).unwrap();
        assert_eq!(
            [
                size("z"),
                size("val"),
                size("in"),
                size("p"),
                size("arr"),
                size("byte")
            ],
            [8, 8, 8, 8, 16, 1]
        );
        assert_eq!(off("flag"), 24); // byte aligned, 3 bits: offset fine, size is not
        assert!(matches!(
            btf.member_size("outer", "flag"),
            Err(BtfError::Bitfield { bits: 3, .. })
        ));
        assert!(matches!(
            btf.member_offset("outer", "mode"),
            Err(BtfError::Bitfield {
                bit_offset: 195,
                bits: 5,
                ..
            })
        ));
        assert_eq!(off("byte"), 25);
        assert!(matches!(
            btf.member_offset("old", "nib"),
            Err(BtfError::Bitfield { bits: 4, .. })
        ));
        assert_eq!(
            (
                btf.member_offset("old", "oct").unwrap(),
                btf.member_size("old", "oct").unwrap()
            ),
            (1, 1)
        );
        assert!(matches!(
            btf.member_offset("outer", "p.a"),
            Err(BtfError::NotComposite { .. })
        ));
        assert!(matches!(
            btf.member_offset("outer", "arr.a"),
            Err(BtfError::NotComposite { .. })
        ));
        for bad in ["nope", "", "in.", "in.c", "x.y"] {
            assert!(btf.member_offset("outer", bad).is_err(), "{bad}");
        }
        assert_eq!(btf.struct_size("outer").unwrap(), 80); // not the FWD
        assert!(matches!(
            btf.struct_size("int"),
            Err(BtfError::TypeNotFound { .. })
        ));
        assert_eq!(btf.member_offset("last", "q").unwrap(), 0);
        assert_eq!(btf.struct_size("last").unwrap(), 4);
        assert_eq!(btf.enum_value("small", "NEG").unwrap(), -2);
        assert_eq!(btf.enum_value("uns", "BIG").unwrap(), 0xffff_ffff);
        assert_eq!(btf.enum_value("wide", "HUGE").unwrap(), (1 << 40) | 5);
        assert_eq!(btf.enum_value("wide", "ALL").unwrap(), -1);
        assert!(matches!(
            btf.enum_value("wide", "X"),
            Err(BtfError::EnumeratorNotFound { .. })
        ));
        assert!(matches!(
            btf.enum_value("outer", "x"),
            Err(BtfError::TypeNotFound { .. })
        ));
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

    #[test]
    fn malformed_input_errors_without_panicking() {
        let blob = synthetic().build(false);
        for len in 0..blob.len() {
            assert!(
                Btf::parse(&blob[..len]).is_err(),
                "prefix of {len} bytes parsed"
            );
        }
        let mut bad = blob.clone();
        bad[0] = 0;
        assert!(matches!(Btf::parse(&bad), Err(BtfError::Malformed(_))));
        let mut b = Builder::new();
        b.ty("x", 20, 0, false, 0, &[]);
        assert!(Btf::parse(&b.build(false)).is_err());
        // A typedef cycle and dangling ids must error at look-up, not loop or panic.
        let mut b = Builder::new();
        b.ty("a", KIND_TYPEDEF, 0, false, 2, &[]);
        b.ty("b", KIND_TYPEDEF, 0, false, 1, &[]);
        b.list(
            "s",
            KIND_STRUCT,
            false,
            8,
            &[("m", &[1, 0]), ("d", &[99, 0]), ("", &[98, 32])],
        );
        let btf = Btf::parse(&b.build(false)).unwrap();
        assert!(btf.member_size("s", "m").is_err());
        assert!(btf.member_size("s", "d").is_err());
        assert!(btf.member_offset("s", "zz").is_err());
        // Flip every byte of a valid blob in turn: any outcome but a panic is fine.
        for i in 0..blob.len() {
            let mut b = blob.clone();
            b[i] ^= 0xff;
            if let Ok(btf) = Btf::parse(&b) {
                let _ = (
                    btf.member_offset("outer", "z"),
                    btf.member_size("outer", "val"),
                    btf.func_params("vf"),
                );
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
        let btf = Btf::from_sys_fs().unwrap();
        println!(
            "parsed {VMLINUX}: {} types in {:?}",
            btf.types.len() - 1,
            start.elapsed()
        );
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        assert_eq!(btf.member_offset("task_struct", "tgid").unwrap(), pid + 4);
        assert_eq!(btf.member_size("task_struct", "pid").unwrap(), 4);
        assert!(
            btf.member_offset("task_struct", "cgroups").unwrap()
                < btf.struct_size("task_struct").unwrap()
        );
        assert_eq!(btf.member_size("task_struct", "cgroups").unwrap(), PTR_SIZE);
        btf.member_offset("css_set", "subsys").unwrap();
        for m in ["counter", "limit"] {
            btf.member_offset("pids_cgroup", m).unwrap();
            assert_eq!(btf.member_size("pids_cgroup", m).unwrap(), 8);
        }
        btf.enum_value("cgroup_subsys_id", "pids_cgrp_id").unwrap();
        for f in [
            "copy_process",
            "kernel_clone",
            "pidfs_alloc_file",
            "cgroup_can_fork",
            "anon_inode_getfile",
        ] {
            assert!(btf.has_func(f), "{f}");
        }
        assert!(!btf.has_func("pidfd_create"), "inlined on 6.18");
        assert_eq!(btf.member_offset("kernel_clone_args", "flags").unwrap(), 0);
        // Anonymous unions (struct file, sk_buff) and a dotted path through an embedded struct.
        let f_path = btf.member_offset("file", "f_path").unwrap();
        assert!(f_path > 0 && btf.member_size("file", "f_path").unwrap() == 2 * PTR_SIZE);
        btf.member_offset("sk_buff", "next").unwrap();
        let se = btf.member_offset("task_struct", "se").unwrap();
        let exec_start = btf.member_offset("sched_entity", "exec_start").unwrap();
        assert_eq!(
            btf.member_offset("task_struct", "se.exec_start").unwrap(),
            se + exec_start
        );
        assert!(btf.member_offset("task_struct", "signal.rlim").is_err()); // a pointer
        println!(
            "pidfs_alloc_file{:?}",
            btf.func_params("pidfs_alloc_file").unwrap()
        );
    }
}
