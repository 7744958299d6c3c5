//! How the follower thread reaches the control file, which the cluster's manager task owns.
//!
//! The follower never writes the control file itself: it sends a request and waits for the
//! manager's answer, which comes only after the change is durable. The manager publishes every
//! durable state on a `watch` channel, read here as a snapshot.

use anyhow::{Context, Result, anyhow};
use control_file::ClusterState;
use tokio::sync::{mpsc, oneshot, watch};

/// A change to apply to the control file.
pub(crate) type StateChange = Box<dyn FnOnce(&mut ClusterState) + Send>;

/// A request to the manager; the reply comes once the result is on disk.
pub(crate) enum ControlRequest {
    /// First contact with a cluster: create the control file with this state.
    Create {
        state: Box<ClusterState>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Apply a change and save.
    Update {
        change: StateChange,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Upload the partial segment at the current commit LSN now (e.g. the final partial of a
    /// timeline that is ending); the reply names it, or `None` when there was nothing to upload.
    UploadPartial {
        reply: oneshot::Sender<Result<Option<String>>>,
    },
}

/// The follower's handle on the control file.
#[derive(Clone)]
pub(crate) struct ControlClient {
    requests: mpsc::Sender<ControlRequest>,
    state: watch::Receiver<Option<ClusterState>>,
}

impl ControlClient {
    pub(crate) fn new(
        requests: mpsc::Sender<ControlRequest>,
        state: watch::Receiver<Option<ClusterState>>,
    ) -> ControlClient {
        ControlClient { requests, state }
    }

    /// The latest durable state, or `None` before the control file exists.
    pub(crate) fn snapshot(&self) -> Option<ClusterState> {
        self.state.borrow().clone()
    }

    /// Durably creates the control file.
    pub(crate) async fn create(&self, state: ClusterState) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(ControlRequest::Create {
            state: Box::new(state),
            reply,
        })
        .await?;
        answer
            .await
            .map_err(|_| anyhow!("the cluster manager stopped before answering"))?
    }

    /// Durably applies `change`.
    pub(crate) async fn update(&self, change: StateChange) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(ControlRequest::Update { change, reply }).await?;
        answer
            .await
            .map_err(|_| anyhow!("the cluster manager stopped before answering"))?
    }

    /// Uploads the partial segment at the current commit LSN and waits for it.
    pub(crate) async fn upload_partial_now(&self) -> Result<Option<String>> {
        let (reply, answer) = oneshot::channel();
        self.send(ControlRequest::UploadPartial { reply }).await?;
        answer
            .await
            .map_err(|_| anyhow!("the cluster manager stopped before answering"))?
    }

    async fn send(&self, request: ControlRequest) -> Result<()> {
        self.requests
            .send(request)
            .await
            .map_err(|_| anyhow!("the cluster manager is not running"))
            .context("cannot update the control file")
    }
}
