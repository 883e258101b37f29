//! A fleet on one machine, as production has it: several Envoy processes (each with its own
//! shared data, as every replica), credential-service replicas on one real PostgreSQL (the
//! one-time-use authority), an upstream behind the gates, and the same master key everywhere.
//! Used by `tests/fleet.rs` and the fleet soak.

use crate::{demo_config, with_gated_upstream, CredentialService, Echo, Envoy, Postgres};

/// `envoy/envoy.yaml` in front of every service replica (one cluster, an endpoint each), with
/// the gated paths sent to the upstream on `echo_port`; `edit` may change more. The shipped
/// config must let the authority decide.
pub fn fleet_config(
    service_ports: &[u16],
    echo_port: u16,
    edit: impl FnOnce(String) -> String,
) -> String {
    let first = *service_ports.first().expect("a service replica");
    demo_config(first, |c| {
        assert!(
            c.contains(r#""decided_by": "authority""#),
            "the shipped config lets the authority decide"
        );
        let endpoint = format!(
            "              socket_address: {{ address: 127.0.0.1, port_value: {first} }}\n"
        );
        let cluster = c
            .find("cluster_name: credential_service")
            .expect("credential cluster");
        let at = cluster + c[cluster..].find(&endpoint).expect("its endpoint") + endpoint.len();
        let more: String = service_ports[1..]
            .iter()
            .map(|port| {
                format!(
                    "        - endpoint:\n            address:\n              socket_address: {{ address: 127.0.0.1, port_value: {port} }}\n"
                )
            })
            .collect();
        let c = format!("{}{more}{}", &c[..at], &c[at..]);
        edit(with_gated_upstream(c, echo_port))
    })
}

pub struct Fleet {
    pub envoys: Vec<Envoy>,
    pub services: Vec<CredentialService>,
    pub echo: Echo,
    pub pg: Postgres,
}

impl Fleet {
    /// `envoys` Envoys (`workers` each) in front of `replicas` service replicas, started with
    /// `service_args` besides the shared database and the demo users; `edit` changes the config.
    pub fn start(
        envoys: usize,
        workers: u32,
        replicas: usize,
        service_args: &[&str],
        edit: impl Fn(String) -> String,
    ) -> Fleet {
        let pg = Postgres::start();
        let url = pg.database_url("otp_fleet");
        let mut args = vec!["--database-url", url.as_str(), "--seed-demo-users"];
        args.extend_from_slice(service_args);
        let services: Vec<CredentialService> = (0..replicas)
            .map(|_| CredentialService::start(&args))
            .collect();
        let ports: Vec<u16> = services.iter().map(|s| s.port).collect();
        let echo = Echo::start();
        let config = fleet_config(&ports, echo.port, &edit);
        let envoys: Vec<Envoy> = (0..envoys)
            .map(|_| Envoy::start_with_workers(&config, workers))
            .collect();
        for envoy in &envoys {
            envoy.wait_for_keys();
        }
        Fleet {
            envoys,
            services,
            echo,
            pg,
        }
    }

    /// The listener of Envoy `i` (modulo the fleet's size), to spread requests.
    pub fn port(&self, i: usize) -> u16 {
        self.envoys[i % self.envoys.len()].port
    }

    /// A `/v1/stats` field summed over the service replicas.
    pub fn service_total(&self, field: &str) -> u64 {
        self.services
            .iter()
            .map(|s| s.stats()[field].as_u64().unwrap_or(0))
            .sum()
    }
}
