//! Local WAL: the page and record layout PostgreSQL writes ([`format`]) and the directory of
//! segment files a follower appends to and fsyncs ([`store`]). Nothing here knows about clusters,
//! control files or object storage; the follower thread is the only writer of a store.

pub(crate) mod format;
pub(crate) mod store;
