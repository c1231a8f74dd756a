//! systemd over its D-Bus API (org.freedesktop.systemd1 on the system bus): unit jobs
//! that wait for their `JobRemoved`, unit state, and unit-file installation for the root
//! side. No `systemctl` subprocesses: a job's result comes back as a typed value, and the
//! unprivileged daemon is allowed exactly what the package's polkit rule grants.

use std::time::Duration;

use futures_util::StreamExt;
use zbus_systemd::systemd1::{ManagerProxy, UnitProxy};

/// polkit rule that grants the daemon's user its own units (shipped in the package).
pub const POLKIT_RULE: &str = "/usr/share/polkit-1/rules.d/50-milvus-fleet.rules";

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot reach systemd on the system bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error(
        "systemd refused to {action} {unit}: {message} (the daemon's user needs the polkit rule {POLKIT_RULE})"
    )]
    Denied {
        action: UnitAction,
        unit: String,
        message: String,
    },
    #[error("{action} {unit}: {message}")]
    Call {
        action: UnitAction,
        unit: String,
        message: String,
    },
    #[error("{action} {unit} ended with result {result:?} (see `journalctl -u {unit}`)")]
    JobFailed {
        action: UnitAction,
        unit: String,
        result: String,
    },
    #[error("{action} {unit} did not finish within {0:?}", timeout)]
    Timeout {
        action: UnitAction,
        unit: String,
        timeout: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitAction {
    Start,
    Stop,
    Restart,
    /// A restart that waits for no other job: systemd's `ignore-dependencies` mode. For a
    /// wedged component, which must not sit behind the stop of a unit ordered after it
    /// (a server cut off from a frozen etcd can take its whole stop timeout).
    RestartAlone,
    Reload,
}

impl std::fmt::Display for UnitAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnitAction::Start => "start",
            UnitAction::Stop => "stop",
            UnitAction::Restart | UnitAction::RestartAlone => "restart",
            UnitAction::Reload => "reload",
        })
    }
}

/// A unit's ActiveState, as systemd names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveState {
    Active,
    Reloading,
    Inactive,
    Failed,
    Activating,
    Deactivating,
    /// A state this systemd has that the list above lacks (maintenance, refreshing).
    Other,
}

impl ActiveState {
    const NAMES: [(ActiveState, &'static str); 6] = [
        (ActiveState::Active, "active"),
        (ActiveState::Reloading, "reloading"),
        (ActiveState::Inactive, "inactive"),
        (ActiveState::Failed, "failed"),
        (ActiveState::Activating, "activating"),
        (ActiveState::Deactivating, "deactivating"),
    ];

    /// From systemd's name.
    pub fn named(name: &str) -> Self {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map_or(ActiveState::Other, |(state, _)| *state)
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(state, _)| *state == self)
            .map_or("other", |(_, name)| name)
    }

    /// Started and not stopping: active, reloading or activating.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            ActiveState::Active | ActiveState::Reloading | ActiveState::Activating
        )
    }
}

impl std::fmt::Display for ActiveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A unit's state as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    pub active: ActiveState,
    /// The service's Result= (success, exit-code, start-limit-hit, ...).
    pub result: String,
}

impl UnitState {
    pub fn is_running(&self) -> bool {
        self.active.is_running()
    }

    /// systemd gave up restarting it (its start limit).
    pub fn gave_up(&self) -> bool {
        self.active == ActiveState::Failed && self.result == "start-limit-hit"
    }
}

#[derive(Clone)]
pub struct Systemd {
    connection: zbus::Connection,
    manager: ManagerProxy<'static>,
}

impl Systemd {
    pub async fn system() -> Result<Self, SystemdError> {
        let connection = zbus::Connection::system().await?;
        let manager = ManagerProxy::new(&connection).await?;
        // systemd sends JobRemoved and PropertiesChanged only while some client subscribed.
        manager.subscribe().await?;
        Ok(Self {
            connection,
            manager,
        })
    }

    /// Runs one job on `unit` and waits for its `JobRemoved`: Ok only when its result is
    /// "done". A start or restart is done when the unit is active, which for the
    /// component units includes their health probe (ExecStartPost).
    pub async fn run(
        &self,
        action: UnitAction,
        unit: &str,
        timeout: Duration,
    ) -> Result<(), SystemdError> {
        // Listen before asking, so the signal cannot pass between the two.
        let mut removed = self.manager.receive_job_removed().await?;
        let mode = match action {
            UnitAction::RestartAlone => "ignore-dependencies",
            _ => "replace",
        };
        let (name, mode) = (unit.to_owned(), mode.to_owned());
        let call = match action {
            UnitAction::Start => self.manager.start_unit(name, mode).await,
            UnitAction::Stop => self.manager.stop_unit(name, mode).await,
            UnitAction::Restart | UnitAction::RestartAlone => {
                self.manager.restart_unit(name, mode).await
            }
            UnitAction::Reload => self.manager.reload_unit(name, mode).await,
        };
        let job = call.map_err(|e| call_error(action, unit, e))?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if args.job.as_str() == job.as_str() {
                    return Some(args.result.to_owned());
                }
            }
            None
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(result)) if result == "done" => Ok(()),
            Ok(Some(result)) => Err(SystemdError::JobFailed {
                action,
                unit: unit.to_owned(),
                result,
            }),
            Ok(None) => Err(SystemdError::Bus(zbus::Error::Failure(
                "the system bus closed the signal stream".into(),
            ))),
            Err(_) => Err(SystemdError::Timeout {
                action,
                unit: unit.to_owned(),
                timeout,
            }),
        }
    }

    /// The service's main process (None while it has none): a property anyone may read.
    pub async fn main_pid(&self, unit: &str) -> Result<Option<u32>, SystemdError> {
        let pid = self.service(unit).await?.main_pid().await?;
        Ok((pid > 0).then_some(pid))
    }

    /// `systemctl reset-failed`: clears the failed state and the start rate limit's count.
    pub async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        // Through the unit's object, which loads it first (the manager's call refuses a
        // unit that is not loaded yet).
        let proxy = self.unit(unit).await?;
        Ok(proxy.reset_failed().await?)
    }

    /// The unit's state; a unit systemd does not know is "inactive".
    pub async fn state(&self, unit: &str) -> Result<UnitState, SystemdError> {
        let proxy = self.unit(unit).await?;
        let active = ActiveState::named(&proxy.active_state().await?);
        let result = match self.service(unit).await {
            Ok(service) => service.result().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        Ok(UnitState { active, result })
    }

    /// A proxy on the unit's object (loading it if systemd has not yet).
    pub async fn unit(&self, unit: &str) -> Result<UnitProxy<'static>, SystemdError> {
        let path = self.manager.load_unit(unit.to_owned()).await?;
        Ok(UnitProxy::builder(&self.connection)
            .path(path)
            .build()
            .await?)
    }

    async fn service(
        &self,
        unit: &str,
    ) -> Result<zbus_systemd::systemd1::ServiceProxy<'static>, SystemdError> {
        let path = self.manager.load_unit(unit.to_owned()).await?;
        Ok(
            zbus_systemd::systemd1::ServiceProxy::builder(&self.connection)
                .path(path)
                .build()
                .await?,
        )
    }

    /// Root side: make systemd read changed unit files.
    pub async fn reload_daemon(&self) -> Result<(), SystemdError> {
        Ok(self.manager.reload().await?)
    }

    /// Root side: `systemctl enable` for unit files (their [Install] sections).
    pub async fn enable(&self, units: &[String]) -> Result<(), SystemdError> {
        self.manager
            .enable_unit_files(units.to_vec(), false, true)
            .await?;
        Ok(())
    }

    /// Root side: `systemctl disable`.
    pub async fn disable(&self, units: &[String]) -> Result<(), SystemdError> {
        self.manager
            .disable_unit_files(units.to_vec(), false)
            .await?;
        Ok(())
    }
}

fn call_error(action: UnitAction, unit: &str, error: zbus::Error) -> SystemdError {
    // zbus reports the error names it knows (these two among them) as fdo::Error.
    if let zbus::Error::FDO(fdo) = &error {
        if let zbus::fdo::Error::AccessDenied(message)
        | zbus::fdo::Error::InteractiveAuthorizationRequired(message) = fdo.as_ref()
        {
            return SystemdError::Denied {
                action,
                unit: unit.to_owned(),
                message: message.clone(),
            };
        }
    }
    match &error {
        zbus::Error::MethodError(name, message, _) => {
            let message = message.clone().unwrap_or_default();
            if name.as_str().ends_with("InteractiveAuthorizationRequired")
                || name.as_str().ends_with("AccessDenied")
            {
                SystemdError::Denied {
                    action,
                    unit: unit.to_owned(),
                    message,
                }
            } else {
                SystemdError::Call {
                    action,
                    unit: unit.to_owned(),
                    message: format!("{}: {message}", name.as_str()),
                }
            }
        }
        _ => SystemdError::Bus(error),
    }
}

#[cfg(test)]
mod tests {
    use super::ActiveState;

    #[test]
    fn active_states_round_trip_and_unknown_ones_are_other() {
        for (state, name) in ActiveState::NAMES {
            assert_eq!(ActiveState::named(name), state);
            assert_eq!(state.as_str(), name);
        }
        assert_eq!(ActiveState::named("maintenance"), ActiveState::Other);
        assert!(ActiveState::Activating.is_running());
        assert!(!ActiveState::Deactivating.is_running());
    }
}
