//! Service fixtures for the fault suite: a RabbitMQ node, a Redis server,
//! a Postfix SMTP sink and a PostgreSQL cluster of a scenario's own, on free
//! ports, so that stopping one never disturbs the shared services.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::common::{free_port, wait_until, TestEnv, POSTGRES_SERVER};
use ordctl::messaging::topology::QueueType;

/// A RabbitMQ node of the scenario's own, on free ports, with its own data
/// directory: stopping it never disturbs the shared broker.
pub struct RabbitNode {
    node: String,
    port: u16,
    env: Vec<(String, String)>,
    dir: PathBuf,
}

impl RabbitNode {
    pub fn start(id: &str) -> Self {
        let (port, dist_port) = (free_port(), free_port());
        let node = format!("ordctl_{id}@localhost");
        // Under /var/lib/rabbitmq: the server scripts run as the rabbitmq user.
        let dir = PathBuf::from(format!("/var/lib/rabbitmq/ordctl-test-{id}"));
        std::fs::create_dir_all(&dir).expect("creating the node's directory");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .expect("config");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins");
        let status = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(status.success());
        let path = |name: &str| dir.join(name).display().to_string();
        let env = vec![
            ("RABBITMQ_NODENAME".to_string(), node.clone()),
            ("RABBITMQ_NODE_PORT".to_string(), port.to_string()),
            ("RABBITMQ_DIST_PORT".to_string(), dist_port.to_string()),
            ("RABBITMQ_CONFIG_FILE".to_string(), path("rabbitmq.conf")),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE".to_string(),
                path("enabled_plugins"),
            ),
            ("RABBITMQ_MNESIA_BASE".to_string(), path("mnesia")),
            ("RABBITMQ_LOG_BASE".to_string(), path("log")),
            ("RABBITMQ_PID_FILE".to_string(), path("pid")),
        ];
        let broker = Self {
            node,
            port,
            env,
            dir,
        };
        broker.restart();
        broker
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node (again) and waits until it accepts clients.
    pub fn restart(&self) {
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .status()
            .expect("starting rabbitmq-server");
        assert!(status.success(), "rabbitmq-server -detached failed");
        // `-detached` returns before the node registers with epmd, and until
        // then `await_startup` fails at once: poll until it answers.
        let log = self.dir.join("log");
        wait_until(
            &format!("the scenario's RabbitMQ node (log: {})", log.display()),
            Duration::from_secs(180),
            || self.ctl(&["await_startup", "--timeout", "10"]),
        );
        wait_until("the node's AMQP listener", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// Stops the whole node, as an operator's restart would.
    pub fn stop(&self) {
        self.ctl(&["stop"]);
    }

    pub fn ctl(&self, args: &[&str]) -> bool {
        Command::new("rabbitmqctl")
            .args(["-n", &self.node])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.stop();
        // A failed scenario keeps the node's logs for a look.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A Redis server of the scenario's own, keeping nothing on disk.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
        };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on its port.
    pub fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        wait_until("redis-server", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Postfix's smtp-sink rejecting every recipient: `-r` answers 4xx (soft),
/// `-f` 5xx (hard).
pub struct PostfixSink(Child);

impl PostfixSink {
    pub fn start(port: u16, reject: &str, dir: &Path) -> Self {
        let log = std::fs::File::create(dir.join(format!("smtp-sink-{port}.log"))).expect("log");
        let child = Command::new("/usr/sbin/smtp-sink")
            .args(["-u", "nobody", reject, "RCPT"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("100")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting smtp-sink (Debian package postfix; scripts/services.sh installs it)");
        wait_until("smtp-sink", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self(child)
    }

    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for PostfixSink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PostgreSQL cluster of the scenario's own (initdb, trust auth) on a
/// free port, so restarting it never disturbs the shared server.
pub struct PostgresCluster {
    port: u16,
    dir: tempfile::TempDir,
}

impl PostgresCluster {
    const BIN: &'static str = "/usr/lib/postgresql/15/bin";

    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ordctl-pg-")
            .tempdir()
            .expect("temp dir");
        let status = Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(status.success());
        let cluster = Self {
            port: free_port(),
            dir,
        };
        let data = cluster.data();
        assert!(cluster.as_postgres(
            &format!("{}/initdb", Self::BIN),
            &["-D", &data, "--auth=trust", "-U", "postgres"]
        ));
        cluster.pg_ctl("start");
        cluster
    }

    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    pub fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// A fast restart: every client connection is cut.
    pub fn restart(&self) {
        self.pg_ctl("restart");
    }

    pub fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        let pg_ctl = format!("{}/pg_ctl", Self::BIN);
        let ok = self.as_postgres(
            &pg_ctl,
            &[
                "-D",
                &self.data(),
                "-m",
                "fast",
                "-w",
                "-o",
                &options,
                "-l",
                &log,
                action,
            ],
        );
        assert!(ok, "pg_ctl {action} failed; see {log}");
    }

    /// PostgreSQL refuses to run as root: its tools run as `postgres`.
    pub fn as_postgres(&self, program: &str, args: &[&str]) -> bool {
        // From `/`: postgres may not enter the test's working directory.
        Command::new("runuser")
            .current_dir("/")
            .args(["-u", "postgres", "--", program])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        let pg_ctl = format!("{}/pg_ctl", Self::BIN);
        self.as_postgres(&pg_ctl, &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

/// A three-node RabbitMQ cluster of the suite's own, run by
/// `scripts/cluster.sh` (node names `ordctl-faults-N@localhost`, AMQP ports
/// 5691-5693, its own data directory): stopping or killing one of its nodes
/// never disturbs the shared broker, nor a cluster a developer runs.
pub struct Cluster {
    urls: String,
}

impl Cluster {
    const ENV: [(&'static str, &'static str); 3] = [
        ("ORDCTL_CLUSTER_NAME", "ordctl-faults"),
        ("ORDCTL_CLUSTER_PORT", "5691"),
        ("ORDCTL_CLUSTER_DIR", "/var/tmp/ordctl-cluster-faults"),
    ];

    /// Starts the nodes (again) and joins them; waits until all three run.
    pub fn start() -> Self {
        let output = Self::script(&["start"]);
        let urls = output
            .lines()
            .find_map(|line| line.strip_prefix("export AMQP_URL="))
            .map(|quoted| quoted.trim_matches('\'').to_string())
            .unwrap_or_else(|| panic!("no AMQP_URL in cluster.sh's output: {output}"));
        Self { urls }
    }

    /// The AMQP URL list, starting with node `first` (1-3), then the others
    /// in turn: each process of a scenario can be pointed at another node.
    pub fn urls_from(&self, first: usize) -> String {
        let urls: Vec<&str> = self.urls.split(',').collect();
        let n = urls.len();
        (0..n)
            .map(|step| urls[(first - 1 + step) % n])
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts the nodes that are not running (a killed one) and waits
    /// until the three form the cluster again.
    pub fn restart(&self) {
        Self::script(&["start"]);
    }

    /// SIGKILLs node `n`, as a crash would.
    pub fn kill(&self, n: usize) {
        Self::script(&["kill", &n.to_string()]);
    }

    fn script(args: &[&str]) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh");
        let output = Command::new(&script)
            .args(args)
            .envs(Self::ENV)
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/cluster.sh");
        assert!(
            output.status.success(),
            "scripts/cluster.sh {args:?} failed"
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl TestEnv {
    /// A [`TestEnv`] on the RabbitMQ nodes `amqp_urls` (a comma-separated
    /// list), with quorum queues.
    pub fn on_cluster(amqp_urls: &str) -> Self {
        Self::on(POSTGRES_SERVER, amqp_urls, QueueType::Quorum)
    }
}

impl Drop for Cluster {
    /// Stops the nodes and deletes their data, unless the scenario failed
    /// (then their logs stay for a look, and the nodes are only stopped).
    fn drop(&mut self) {
        let action = if std::thread::panicking() {
            "stop"
        } else {
            "destroy"
        };
        let _ = std::panic::catch_unwind(|| Self::script(&[action]));
    }
}
