//! Tally's storage core: the write-ahead log (the source of truth), and later the account tables,
//! the lock manager and the 2PC participant. The engine never touches a socket.

pub mod lock;
pub mod wal;
