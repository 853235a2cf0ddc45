//! openraft's storage test suite against the RocksDB log store and state machine.

use std::sync::Arc;

use flotilla_store::log_store::LogStore;
use flotilla_store::metrics::Metrics;
use flotilla_store::rocks::Db;
use flotilla_store::state_machine::StateMachine;
use flotilla_store::types::{StorageError, TypeConfig};
use openraft::testing::log::{StoreBuilder, Suite};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open db");
        let metrics = Arc::new(Metrics::new());
        let log = LogStore::new(db.clone(), metrics.clone());
        let sm = StateMachine::open(db, metrics, dir.path().join("snapshots")).expect("open state machine");
        Ok((dir, log, sm))
    }
}

/// Every case of openraft's storage suite passes on the RocksDB log store and state
/// machine (vote, log state, append/truncate/purge, readers seeing appends at once,
/// apply with responders, snapshot build, transfer and install, initial state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::result_large_err)]
async fn rocksdb_log_store_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(RocksBuilder).await?;
    Ok(())
}
