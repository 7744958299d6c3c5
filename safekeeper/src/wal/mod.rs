//! Local WAL: the page and record layout PostgreSQL writes ([`format`](mod@format)) and the directory of
//! segment files a follower appends to and fsyncs ([`store`]), with the next segment's file prepared
//! off the commit path ([`spare`]), and the check of streamed WAL
//! against the cluster's format ([`stream_check`]). Nothing here knows about clusters,
//! control files or object storage; the follower thread is the only writer of a store.

pub(crate) mod format;
pub(crate) mod space;
pub(crate) mod spare;
pub(crate) mod store;
pub(crate) mod stream_check;
