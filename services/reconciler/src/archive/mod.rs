//! The Parquet archive of raw view events.

pub mod layout;
pub mod parquet_io;
pub mod service;
pub mod storage;
