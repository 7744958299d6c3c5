//! The manager's inbox: requests from the follower (control file creation and updates, an
//! upload before a timeline switch) and commands from the admin API (upload now, GC now, term
//! bump). Each is answered exactly once: at once, or by the work it starts (`partial.rs`,
//! `gc.rs`), which holds its reply.

use std::time::Instant;

use anyhow::anyhow;
use tracing::info;

use super::audit::Audits;
use super::control_store::ControlStore;
use super::{Manager, ManagerCommand};
use crate::cluster::control::ControlRequest;

impl Manager {
    pub(super) fn handle_request(&mut self, req: ControlRequest) {
        match req {
            ControlRequest::Create { state, reply } => {
                let path = self
                    .wiring
                    .wal_dir
                    .with_file_name(crate::cluster::follower::CONTROL_FILE_NAME);
                let result = if self.control.is_some() {
                    Err(anyhow!("internal error: control file created twice"))
                } else {
                    ControlStore::create(&path, *state).map(|c| {
                        self.progress.flush_lsn = c.state().flush_lsn;
                        self.progress.commit_lsn = c.state().commit_lsn;
                        // A data directory made anew may find its own objects in the archive.
                        self.audit = Audits::at_start(c.state(), Instant::now());
                        self.control = Some(c);
                    })
                };
                self.on_state_changed();
                let _ = reply.send(result);
            }
            ControlRequest::Update { change, reply } => {
                let result = self.update(change);
                let _ = reply.send(result);
            }
            ControlRequest::UploadPartial { reply } => {
                self.on_progress();
                self.partial.waiters.push(reply);
                self.partial.kick = true;
            }
        }
    }

    pub(super) async fn handle_command(&mut self, cmd: ManagerCommand) {
        match cmd {
            ManagerCommand::UploadPartialNow(reply) => {
                self.on_progress();
                self.partial.waiters.push(reply);
                self.start_partial().await;
                self.answer_idle_partial_waiters();
            }
            ManagerCommand::GcNow(reply) => {
                self.gc.waiters.push(reply);
                self.start_gc();
            }
            ManagerCommand::TermBump(reply) => {
                let flush = self.progress.flush_lsn;
                let result = self
                    .update(Box::new(move |s| {
                        let timeline = s.timeline;
                        s.start_term(timeline, flush.max(s.flush_lsn));
                    }))
                    .and_then(|()| self.state().map(|s| s.term));
                if let Ok(term) = &result {
                    info!(term, at = %flush, "started a new term on request");
                }
                let _ = reply.send(result);
            }
        }
    }
}
