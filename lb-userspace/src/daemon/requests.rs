//! The daemon's answers to its clients: control requests (`xdpvs status`, `reload`,
//! `real ...`) and `/metrics` scrapes, each read or applied in the daemon's task.

use super::{views, Daemon};
use crate::{
    config,
    control::{self, RealAction, Request, Response},
    dataplane::bpf::BpfDataplane,
    metrics,
    reconcile::{Override, RealView},
};

impl Daemon {
    /// Answers one control request. A status is read now; its flow counts are filled in
    /// by a walk of the connection table on a blocking thread, so a large table does
    /// not hold up this task.
    pub(super) async fn on_control(
        &mut self,
        req: Request,
        reply: tokio::sync::oneshot::Sender<Response>,
    ) {
        let resp = match req {
            Request::Status => match self.views().status() {
                Ok((status, count)) => {
                    count.fill_then(status, reply, |r| match r {
                        Ok(s) => Response {
                            ok: true,
                            message: None,
                            status: Some(s),
                        },
                        Err(e) => Response::error(format!("{e:#}")),
                    });
                    return;
                }
                Err(e) => Response::error(format!("{e:#}")),
            },
            Request::Ready => {
                let r = self.views().readiness();
                Response {
                    ok: r.ready,
                    message: Some(r.summary()),
                    status: None,
                }
            }
            Request::Withdraw => {
                self.withdrawn = true;
                self.save_state(None);
                tracing::warn!("node withdrawn by `xdpvs withdraw`: no VIP is announced and `xdpvs ready` fails until `xdpvs announce`");
                Response::ok("withdrawn: no VIP is announced and `xdpvs ready` fails until `xdpvs announce` (kept across restarts)")
            }
            Request::Announce => {
                let was = std::mem::replace(&mut self.withdrawn, false);
                self.save_state(None);
                if was {
                    tracing::info!(
                        "node back by `xdpvs announce`: VIPs at min_healthy are announced"
                    );
                }
                let lines: Vec<String> = self
                    .views()
                    .announcements()
                    .iter()
                    .map(|a| {
                        let what = if a.announced {
                            "announced"
                        } else {
                            "not announced"
                        };
                        format!("{} {what}: {}", a.address, a.reason)
                    })
                    .collect();
                Response::ok(
                    std::iter::once("announcing".to_string())
                        .chain(lines)
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            }
            Request::Reload => match self.reload().await {
                Ok(m) => Response::ok(m),
                Err(e) => Response::error(e),
            },
            Request::Real { vs, real, action } => match self.real_override(&vs, &real, action) {
                Ok(m) => Response::ok(m),
                Err(e) => Response::error(format!("{e:#}")),
            },
        };
        let _ = reply.send(resp);
    }

    /// `xdpvs real disable|enable|weight`: a runtime override of one real.
    fn real_override(
        &mut self,
        vs: &str,
        real: &str,
        action: RealAction,
    ) -> anyhow::Result<String> {
        let (addr, port) = control::parse_real(real)
            .ok_or_else(|| anyhow::anyhow!("`{real}` is not ADDRESS or ADDRESS:PORT"))?;
        if !self.rec.virtual_servers().any(|v| v.name == vs) {
            anyhow::bail!("no virtual server named `{vs}`");
        }
        let matches: Vec<RealView> = self
            .rec
            .real_views(vs)
            .into_iter()
            .filter(|v| !v.key.sorry && v.key.addr == addr && port.is_none_or(|p| p == v.key.port))
            .collect();
        let (key, file_weight) = match matches.as_slice() {
            [v] => (v.key.clone(), v.file_weight),
            [] => anyhow::bail!("virtual server `{vs}` has no real {real}"),
            _ => anyhow::bail!(
                "virtual server `{vs}` has several reals at {addr}: give ADDRESS:PORT"
            ),
        };
        let mut o = self
            .rec
            .override_of(&key)
            .unwrap_or(Override::new(file_weight));
        if let RealAction::Weight(w) = action {
            if w > config::MAX_WEIGHT {
                anyhow::bail!("weight {w} is out of range 0..={}", config::MAX_WEIGHT);
            }
        }
        match action {
            RealAction::Disable => o.disabled = true,
            RealAction::Enable => o.disabled = false,
            RealAction::Weight(w) => o.weight = Some(w),
        }
        let change = (o.disabled || o.weight.is_some_and(|w| w != file_weight)).then_some(o);
        self.rec.set_override(&key, change)?;
        let what = match action {
            RealAction::Disable => {
                "disabled (draining: no new connections, established ones continue)".to_string()
            }
            RealAction::Enable => "enabled".to_string(),
            RealAction::Weight(w) => format!("weight set to {w} (file: {file_weight})"),
        };
        tracing::info!(vs = %vs, real = %key.addr, port = key.port, "runtime override: real {what}");
        Ok(format!("{vs} {}:{}: {what}", key.addr, key.port))
    }

    /// What status and metrics read, as of now.
    pub(super) fn views(&self) -> views::Sources<'_, BpfDataplane> {
        views::Sources {
            config: &self.path,
            rec: &self.rec,
            health: &self.health,
            flow_table_size: self.flow_table_size,
            reloads: self.reloads,
            withdrawn: self.withdrawn,
            announce_table: self.routes.table(),
        }
    }

    /// Answers one scrape of `/metrics`, as [`Daemon::on_control`] answers a status.
    pub(super) fn on_scrape(&self, reply: metrics::Ask) {
        let (snapshot, count) = match self.views().snapshot() {
            Ok(s) => s,
            Err(e) => {
                let _ = reply.send(Err(format!("{e:#}")));
                return;
            }
        };
        count.fill_then(snapshot.status, reply, move |r| match r {
            Ok(status) => Ok(metrics::Snapshot { status, ..snapshot }),
            Err(e) => Err(format!("{e:#}")),
        });
    }
}
