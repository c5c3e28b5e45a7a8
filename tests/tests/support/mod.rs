//! Helpers shared by the integration tests (not a test binary itself).
#![allow(dead_code)]
pub mod cluster;
pub mod packet;
pub mod pcap;
