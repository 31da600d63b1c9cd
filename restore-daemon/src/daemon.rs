//! Start-up and shutdown: store, staging area, socket, lease reaper, signals.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::host::HostInfo;
use crate::server::{self, Access};
use crate::service::{Service, Settings};
use crate::stage::StageArea;
use crate::store::{Limits, Store};
use crate::Error;

/// How often unreleased leases are looked for.
const LEASE_SWEEP: Duration = Duration::from_secs(30);

pub async fn run(config: &Config) -> Result<(), Error> {
    let host = {
        let criu = config.criu_binary.clone();
        tokio::task::spawn_blocking(move || HostInfo::detect(&criu))
            .await
            .map_err(|e| Error::Startup(e.to_string()))?
    };
    let limits = Limits {
        max_files: config.max_files,
        max_total_bytes: config.max_total_bytes,
        ..Limits::default()
    };
    let (store, cleaned) =
        Store::open(&config.store, limits).map_err(|e| Error::Startup(e.to_string()))?;
    let stage = StageArea::open(
        &config.stage_dir,
        config.mount_stage_tmpfs,
        config.stage_tmpfs_size.as_deref(),
    )
    .map_err(|e| {
        Error::Startup(format!(
            "cannot prepare the staging area {}: {e}",
            config.stage_dir.display()
        ))
    })?;
    let listener = server::bind(&config.socket, config.socket_gid)
        .map_err(|e| Error::Startup(format!("cannot listen on {}: {e}", config.socket.display())));
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            stage.close();
            return Err(e);
        }
    };
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::Startup(e.to_string()))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::Startup(e.to_string()))?;

    tracing::info!(
        socket = %config.socket.display(),
        store = %config.store.display(),
        stage_dir = %stage.dir().display(),
        staged_in_memory = stage.in_memory(),
        criu_version = host.criu_version.as_deref().unwrap_or("unknown"),
        criu_binary = %config.criu_binary.display(),
        kernel_release = %host.kernel_release,
        leftovers_removed = cleaned,
        "rekindle-restored listening"
    );
    let service = Arc::new(Service::new(
        store,
        stage,
        host,
        Settings {
            lease_ttl: Duration::from_secs(config.lease_ttl_secs),
        },
    ));
    let reaper = {
        let service = service.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_SWEEP);
            loop {
                tick.tick().await;
                service.expire_leases().await;
            }
        })
    };
    let shutdown = async move {
        let which = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "stopping");
    };
    server::serve(
        service.clone(),
        listener,
        config.socket.clone(),
        Access {
            allowed_uids: config.allowed_uids.clone(),
        },
        shutdown,
    )
    .await;
    reaper.abort();
    let _ = reaper.await;
    match Arc::try_unwrap(service) {
        Ok(service) => service.into_stage().close(),
        Err(_) => tracing::warn!("requests still hold the service; staging area left as is"),
    }
    tracing::info!("stopped");
    Ok(())
}
