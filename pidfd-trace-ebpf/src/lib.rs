//! Library target of the kernel-program crate. It is empty on purpose: the agent
//! (`pidfd-trace`) lists this crate as a build-dependency so that cargo re-runs the agent's
//! build script, which rebuilds and embeds the kernel object, whenever this crate or anything
//! it depends on (`pidfd-trace-common`, the record layout) changes. The programs themselves
//! are the `pidfd-trace` binary target (src/main.rs), built by that build script.
#![no_std]
