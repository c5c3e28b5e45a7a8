//! Helpers shared by the integration tests (not a test binary itself).
pub mod packet;
