//! Losing a node behind HAProxy (docs/cluster.md): `scripts/cluster.sh
//! start` runs 3 broker nodes and HAProxy against the real Kafka of
//! `scripts/kafka.sh`. A Rust STOMP client subscribed through HAProxy's
//! STOMP front end loses its node to SIGKILL, reconnects through HAProxy to
//! another node, resubscribes and keeps receiving; every Kafka-routed record
//! produced throughout arrives (at-least-once: the retained replay on
//! resubscribe fills the gap; duplicates are counted and printed, not
//! hidden). The killed node restarts, `/readyz` is 200 and HAProxy marks it
//! UP again.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use e2e_tests::{
    body,
    kafka::{bootstrap, broker_binary, create_topic, delivered, enqueue, producer, unique},
    Client,
};
use stomp_codec::Command as Cmd;

/// Records produced (one destination each: `/topic/order.<key>`).
const RECORDS: usize = 240;
/// Pause between records: production spans the kill and the reconnect.
const EVERY: Duration = Duration::from_millis(25);

/// The cluster of `scripts/cluster.sh`, stopped on drop.
struct Cluster {
    dir: PathBuf,
    envs: Vec<(&'static str, String)>,
    addrs: HashMap<String, String>,
}

impl Cluster {
    fn start(bin: &Path, topic: &str) -> Result<Cluster> {
        Cluster::start_with(
            bin,
            vec![
                ("CLUSTER_ROUTES", format!("{topic}=/topic/order.{{key}}")),
                // Its own cluster topic: no cross-talk with other tests' clusters.
                ("CLUSTER_TOPIC", unique("cluster-topic")),
            ],
        )
    }

    /// `scripts/cluster.sh start` with these extra environment variables.
    fn start_with(bin: &Path, extra: Vec<(&'static str, String)>) -> Result<Cluster> {
        let dir = std::env::temp_dir().join(unique("cluster"));
        std::fs::create_dir_all(&dir)?;
        let mut envs = vec![
            ("CLUSTER_DIR", dir.display().to_string()),
            ("STOMP_BROKER_BIN", bin.display().to_string()),
            ("CLUSTER_GROUP_ID", unique("cluster-group")),
            ("KAFKA_BOOTSTRAP", bootstrap()),
        ];
        envs.extend(extra);
        let mut c = Cluster {
            dir,
            envs,
            addrs: HashMap::new(),
        };
        let out = c.script(&["start"])?;
        for line in out.lines() {
            if let Some((k, v)) = line.split_once('=') {
                c.addrs.insert(k.to_owned(), v.to_owned());
            }
        }
        Ok(c)
    }

    fn script(&self, args: &[&str]) -> Result<String> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Command::new("bash")
            .arg(root.join("scripts/cluster.sh"))
            .args(args)
            .envs(self.envs.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .context("run scripts/cluster.sh")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "scripts/cluster.sh {args:?} failed:\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    fn addr(&self, key: &str) -> Result<SocketAddr> {
        let v = self
            .addrs
            .get(key)
            .with_context(|| format!("{key} missing"))?;
        let v = v.strip_prefix("http://").unwrap_or(v);
        Ok(v.parse()?)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `stomp_connections` gauge of the node at `http`.
async fn connections(http: SocketAddr) -> Option<u64> {
    let (status, text) = e2e_tests::http_get(http, "/metrics").await.ok()?;
    if status != 200 {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("stomp_connections "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Connects through HAProxy and subscribes, retrying while HAProxy still
/// routes to the dead node (until its health check fails).
async fn connect_and_subscribe(front: SocketAddr, within: Duration) -> Result<Client> {
    let deadline = Instant::now() + within;
    loop {
        let attempt = async {
            let mut c = Client::tcp(front).await?;
            c.connect_default().await?;
            c.subscribe("s", "/topic/order.*", "auto").await?;
            anyhow::Ok(c)
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) if Instant::now() < deadline => eprintln!("reconnect attempt: {e:#}"),
            Err(_) if Instant::now() < deadline => eprintln!("reconnect attempt timed out"),
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("reconnect timed out"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_survives_node_kill_through_haproxy() -> Result<()> {
    let brokers = bootstrap();
    let topic = unique("cluster-orders");
    create_topic(&brokers, &topic, 3).await?;
    let bin = broker_binary()?;
    let cluster = Cluster::start(&bin, &topic)?;
    let front = cluster.addr("CLUSTER_STOMP")?;
    let nodes: Vec<(String, SocketAddr)> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| {
            let key = format!("CLUSTER_{}_HTTP", n.to_uppercase());
            Ok((n.to_string(), cluster.addr(&key)?))
        })
        .collect::<Result<_>>()?;

    let mut client = connect_and_subscribe(front, Duration::from_secs(10)).await?;

    // Records produced throughout: key k<i> → /topic/order.k<i>.
    let p = producer(&brokers);
    let prod_topic = topic.clone();
    let producing = tokio::spawn(async move {
        for i in 0..RECORDS {
            let key = format!("k{i:04}");
            let f = enqueue(&p, &prod_topic, Some(&key), &[], format!("r{i}").as_bytes())?;
            delivered(f).await?;
            tokio::time::sleep(EVERY).await;
        }
        anyhow::Ok(())
    });

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut replayed = 0usize;
    let mut killed: Option<String> = None;
    let mut reconnected_at: Option<Duration> = None;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    while seen.len() < RECORDS {
        if Instant::now() > deadline {
            bail!(
                "only {} of {RECORDS} records arrived; missing e.g. {:?}",
                seen.len(),
                (0..RECORDS)
                    .map(|i| format!("r{i}"))
                    .filter(|r| !seen.contains_key(r))
                    .take(10)
                    .collect::<Vec<_>>()
            );
        }
        if killed.is_none() && seen.len() >= RECORDS / 4 {
            // The node this client is on: the only one with a connection.
            let mut on = Vec::new();
            for (name, http) in &nodes {
                if connections(*http).await.unwrap_or(0) > 0 {
                    on.push(name.clone());
                }
            }
            if on.len() != 1 {
                bail!("expected exactly one node with the client's connection, got {on:?}");
            }
            let mine = on.remove(0);
            eprintln!(
                "killing {mine} (the client's node) after {} records",
                seen.len()
            );
            cluster.script(&["kill", &mine])?;
            killed = Some(mine);
        }
        match client.recv_within(Duration::from_secs(2)).await {
            Ok(f) if f.command == Cmd::Message => {
                if f.headers
                    .get("replayed")
                    .is_some_and(|v| v.as_ref() == b"true")
                {
                    replayed += 1;
                }
                *seen.entry(body(&f)).or_default() += 1;
            }
            Ok(f) => bail!("unexpected frame {f:?}"),
            Err(e) => {
                // Connection lost (or silent): reconnect through HAProxy.
                let t = Instant::now();
                eprintln!("connection lost ({e:#}); reconnecting through HAProxy");
                client = connect_and_subscribe(front, Duration::from_secs(20)).await?;
                reconnected_at = Some(t.elapsed());
            }
        }
    }
    producing.await??;
    let killed = killed.context("node never killed")?;
    let reconnect = reconnected_at.context("the client never lost its connection")?;
    let duplicates: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "all {RECORDS} records arrived; {} duplicates ({replayed} replayed), reconnect took {reconnect:?}, total {:?}",
        duplicates.iter().map(|(_, n)| **n - 1).sum::<usize>(),
        started.elapsed()
    );
    if !duplicates.is_empty() {
        let mut d: Vec<_> = duplicates.iter().map(|(b, n)| format!("{b}×{n}")).collect();
        d.sort();
        eprintln!("duplicates: {}", d.join(" "));
    }

    // The killed node restarts with the same id and ports and rejoins:
    // `restart` waits for /readyz 200 and HAProxy marking it UP.
    cluster.script(&["restart", &killed])?;
    let status = cluster.script(&["status"])?;
    eprintln!("{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with(&format!("{killed}: running"))
                && l.contains("readyz=200")
                && l.contains("haproxy=UP")),
        "{killed} did not rejoin: {status}"
    );
    let http = nodes
        .iter()
        .find(|(n, _)| *n == killed)
        .map(|(_, a)| *a)
        .context("node address")?;
    assert_eq!(e2e_tests::kafka::readyz(http).await, 200);
    client.disconnect().await?;
    Ok(())
}

/// Messages sent to the queue in `rust_queue_consumer_survives_node_kills_through_haproxy`.
const QUEUE_MESSAGES: usize = 90;

/// The `stomp_cluster_queue_owned_partitions` gauge of the node at `http`.
async fn owned_partitions(http: SocketAddr) -> Option<f64> {
    let (status, text) = e2e_tests::http_get(http, "/metrics").await.ok()?;
    if status != 200 {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("stomp_cluster_queue_owned_partitions "))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

/// Removes a directory when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The one node (other than `except`) with client connections, waiting up
/// to 10 s for exactly one.
async fn node_with_connections(
    nodes: &[(String, SocketAddr)],
    except: Option<&str>,
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut on = Vec::new();
        for (name, http) in nodes {
            if Some(name.as_str()) != except && connections(*http).await.unwrap_or(0) > 0 {
                on.push(name.clone());
            }
        }
        if on.len() == 1 {
            return Ok(on.remove(0));
        }
        if Instant::now() > deadline {
            bail!("expected exactly one node (besides {except:?}) with a connection, got {on:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects through HAProxy and subscribes to `queue` with client-individual
/// ack (no receipt: a MESSAGE may come first), retrying while HAProxy still
/// routes to a dead node.
async fn connect_queue_consumer(
    front: SocketAddr,
    queue: &str,
    within: Duration,
) -> Result<Client> {
    let deadline = Instant::now() + within;
    loop {
        let attempt = async {
            let mut c = Client::tcp(front).await?;
            c.connect_default().await?;
            c.command(
                Cmd::Subscribe,
                &[
                    ("id", "q"),
                    ("destination", queue),
                    ("ack", "client-individual"),
                ],
            )
            .await?;
            anyhow::Ok(c)
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) if Instant::now() < deadline => eprintln!("reconnect attempt: {e:#}"),
            Err(_) if Instant::now() < deadline => eprintln!("reconnect attempt timed out"),
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("reconnect timed out"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Issue 13 item 5 for `/queue`: a consumer (client-individual ack, ACKing
/// what it processes) through HAProxy, placed on a node that does not own the
/// queue's partition (one partition: the one node whose
/// `stomp_cluster_queue_owned_partitions` is 1), loses its node to SIGKILL,
/// then the owner is SIGKILLed too, while a producer on the third node SENDs
/// with a receipt each. The consumer reconnects through HAProxy and resubscribes; every
/// RECEIPT'd message arrives at least once (duplicates counted and printed);
/// the killed nodes restart and rejoin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_queue_consumer_survives_node_kills_through_haproxy() -> Result<()> {
    let bin = broker_binary()?;
    // The config must outlive the cluster: `restart` starts the node with it again.
    let conf_dir = RemoveOnDrop(std::env::temp_dir().join(unique("cluster-q-conf")));
    std::fs::create_dir_all(&conf_dir.0)?;
    let config = conf_dir.0.join("nodes.toml");
    // One queue partition, so the queue's owner is the one node owning a partition.
    std::fs::write(
        &config,
        format!(
            "[cluster]\ntopic = \"{}\"\npartitions = 1\n",
            unique("cluster-q-topic")
        ),
    )?;
    let cluster =
        Cluster::start_with(&bin, vec![("CLUSTER_CONFIG", config.display().to_string())])?;
    let front = cluster.addr("CLUSTER_STOMP")?;
    let nodes: Vec<(String, SocketAddr)> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| {
            let key = format!("CLUSTER_{}_HTTP", n.to_uppercase());
            Ok((n.to_string(), cluster.addr(&key)?))
        })
        .collect::<Result<_>>()?;

    let deadline = Instant::now() + Duration::from_secs(60);
    let owner = loop {
        let mut owners = Vec::new();
        for (name, http) in &nodes {
            if owned_partitions(*http).await == Some(1.0) {
                owners.push(name.clone());
            }
        }
        if owners.len() == 1 {
            break owners.remove(0);
        }
        if Instant::now() > deadline {
            bail!("queue partition owners: {owners:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let queue = format!("/queue/{}", unique("rust-cq"));
    let mut client = connect_queue_consumer(front, &queue, Duration::from_secs(10)).await?;
    let mut consumer_node = node_with_connections(&nodes, None).await?;
    if consumer_node == owner {
        // Both kills should happen (the consumer's node, then the owner): while
        // this connection holds the owner, HAProxy's leastconn puts the next one
        // on another node. Nothing has been sent yet, so the swap loses nothing.
        let second = connect_queue_consumer(front, &queue, Duration::from_secs(10)).await?;
        consumer_node = node_with_connections(&nodes, Some(&owner)).await?;
        client.disconnect().await?;
        client = second;
    }
    let mut victims = vec![consumer_node.clone()];
    if owner != consumer_node {
        victims.push(owner.clone());
    }
    let survivor = ["node1", "node2", "node3"]
        .into_iter()
        .find(|n| !victims.iter().any(|v| v == n))
        .context("a surviving node")?;
    let mut producer =
        Client::tcp(cluster.addr(&format!("CLUSTER_{}_STOMP", survivor.to_uppercase()))?).await?;
    producer.connect_default().await?;
    eprintln!("consumer on {consumer_node}, queue owner {owner}, producer on {survivor}");

    // The consumer: records and ACKs every MESSAGE, reconnects through HAProxy.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<String, usize>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consuming = {
        let (seen, stop, queue) = (seen.clone(), stop.clone(), queue.clone());
        tokio::spawn(async move {
            let mut client = client;
            let mut reconnects = 0usize;
            let mut redelivered = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client.recv_within(Duration::from_millis(500)).await {
                    Ok(f) if f.command == Cmd::Message => {
                        if f.header_str("redelivered") == Some("true") {
                            redelivered += 1;
                        }
                        *seen.lock().expect("seen").entry(body(&f)).or_default() += 1;
                        let ack = f.header_str("ack").context("ack header")?.to_owned();
                        // A dead connection shows on the next receive.
                        let _ = client.command(Cmd::Ack, &[("id", &ack)]).await;
                    }
                    Ok(f) => bail!("unexpected frame {f:?}"),
                    Err(e) if e.to_string().contains("timed out") => {}
                    Err(e) => {
                        eprintln!("consumer connection lost ({e:#}); reconnecting through HAProxy");
                        client =
                            connect_queue_consumer(front, &queue, Duration::from_secs(30)).await?;
                        reconnects += 1;
                    }
                }
            }
            anyhow::Ok((reconnects, redelivered))
        })
    };

    let mut receipted = Vec::new();
    for i in 0..QUEUE_MESSAGES {
        if i == QUEUE_MESSAGES / 3 {
            cluster.script(&["kill", &victims[0]])?;
        }
        if i == 2 * QUEUE_MESSAGES / 3 && victims.len() > 1 {
            cluster.script(&["kill", &victims[1]])?;
        }
        let body = format!("m{i:04}");
        match tokio::time::timeout(
            Duration::from_secs(20),
            producer.send_receipted(&queue, &body),
        )
        .await
        {
            Ok(Ok(())) => receipted.push(body),
            Ok(Err(e)) => bail!("producer on the surviving node failed: {e:#}"),
            Err(_) => eprintln!("no RECEIPT for {body} within 20 s (it may be lost)"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let missing: Vec<String> = {
            let seen = seen.lock().expect("seen");
            receipted
                .iter()
                .filter(|b| !seen.contains_key(*b))
                .cloned()
                .collect()
        };
        if missing.is_empty() || Instant::now() > deadline || consuming.is_finished() {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reconnects, redelivered) = consuming.await??;
    let seen = seen.lock().expect("seen").clone();
    let mut dups: Vec<String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(b, n)| format!("{b}×{n}"))
        .collect();
    dups.sort();
    eprintln!(
        "rust queue failover: {}/{QUEUE_MESSAGES} receipted, {} of them received, {} duplicates [{}], \
         {redelivered} redelivered, {reconnects} reconnects, killed {victims:?}",
        receipted.len(),
        receipted.len() - missing.len(),
        seen.values().map(|n| n - 1).sum::<usize>(),
        dups.join(" "),
    );
    assert!(
        missing.is_empty(),
        "receipted queue messages lost: {missing:?}"
    );
    assert!(!receipted.is_empty(), "the producer got no RECEIPT at all");
    assert!(reconnects >= 1, "the consumer never lost its connection");
    producer.disconnect().await?;

    for v in &victims {
        cluster.script(&["restart", v])?;
    }
    let status = cluster.script(&["status"])?;
    for v in &victims {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(&format!("{v}: running"))
                    && l.contains("readyz=200")
                    && l.contains("haproxy=UP")),
            "{v} did not rejoin: {status}"
        );
    }
    Ok(())
}
