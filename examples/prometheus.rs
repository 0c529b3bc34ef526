//! The consumer's metrics served to Prometheus, with the dead-letter hook and a health check.
//!
//! Installs the Prometheus recorder from `metrics-exporter-prometheus` (built without its
//! default features, so without tokio or hyper), runs a consumer on the embedded default (an
//! in-memory SQLite inbox and the in-process stream), publishes a few events (one a duplicate,
//! one malformed, one its handler gives up on), then serves the metrics in the Prometheus text
//! format over a tiny `std::net::TcpListener` responder. It scrapes itself once and prints what
//! it got, then stops after `--serve-for` seconds, so it also works as a smoke test:
//!
//! ```text
//! cargo run --example prometheus                          # port 9898, 5 s
//! cargo run --example prometheus -- --port 0 --serve-for 60
//! curl -s localhost:9898/metrics | grep eventflow_inbox
//! ```

use eventflow::inbox::DeadLetter;
use eventflow::transport::{MemoryStream, Transport};
use eventflow::{Event, HandlerError, HandlerResult, InboxConsumer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::error::Error;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const STREAM: &str = "orders";
const GROUP: &str = "billing";

struct Options {
    port: u16,
    serve_for: Duration,
}

fn main() -> Result<(), Box<dyn Error>> {
    let options = options()?;
    // Before start(): the consumer registers its metrics with the recorder installed then.
    let prometheus = PrometheusBuilder::new()
        // Latency buckets in seconds, so durations render as Prometheus histograms.
        .set_buckets(&[0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0])?
        .install_recorder()?;

    let stream = MemoryStream::new();
    let handle = InboxConsumer::builder()
        .transport(stream.clone())
        .sqlite_in_memory()
        .stream(STREAM)
        .group(GROUP)
        .on_dead_letter(|dead: &DeadLetter| {
            println!(
                "dead letter: {} {} after {} attempt(s): {}",
                dead.event_type, dead.event_id, dead.attempts, dead.error
            );
        })
        .handler(|_tx, row| -> HandlerResult {
            if row.event.event_type == "Unpayable" {
                return Err(HandlerError::give_up("no payment method on file"));
            }
            Ok(())
        })
        .build()?
        .start()?;

    let events: Vec<Event> = (0..10)
        .map(|i| {
            Event::new(
                "OrderCreated",
                uuid::Uuid::new_v4(),
                serde_json::json!({ "n": i }),
            )
        })
        .collect();
    for event in &events {
        stream.publish(STREAM, event.to_entry_fields())?;
    }
    stream.publish(STREAM, events[0].to_entry_fields())?; // a duplicate
    stream.publish(STREAM, vec![("data".into(), b"{not json".to_vec())])?; // malformed
    let unpayable = Event::new("Unpayable", uuid::Uuid::new_v4(), serde_json::json!({}));
    stream.publish(STREAM, unpayable.to_entry_fields())?;

    handle.wait_idle(Duration::from_secs(30))?;
    let stats = handle.stats();
    if stats.processed + stats.dead_lettered != 11 {
        return Err(format!("expected 11 events settled; got {stats:?}").into());
    }
    let health = handle.health();
    println!(
        "health: live {}, ready {}, last read {:?} ago",
        health.is_live(),
        health.is_ready(),
        health.since_last_read
    );

    let listener = TcpListener::bind(("127.0.0.1", options.port))?;
    let address = listener.local_addr()?;
    println!(
        "serving metrics on http://{address}/metrics for {:?}",
        options.serve_for
    );
    let server = {
        let prometheus = prometheus.clone();
        let until = Instant::now() + options.serve_for;
        std::thread::spawn(move || serve(listener, &prometheus, until))
    };
    println!("--- scraped once ---\n{}", scrape(address)?);
    server.join().map_err(|_| "the responder panicked")??;

    let report = handle.shutdown(Duration::from_secs(10))?;
    println!("stopped: {:?}", report.stats);
    Ok(())
}

/// Answers every request with the rendered metrics until `until`.
fn serve(
    listener: TcpListener,
    prometheus: &PrometheusHandle,
    until: Instant,
) -> std::io::Result<()> {
    // Non-blocking, so the loop notices the end of the serving time between connections.
    listener.set_nonblocking(true)?;
    while Instant::now() < until {
        match listener.accept() {
            Ok((connection, _)) => {
                if let Err(error) = respond(connection, prometheus) {
                    eprintln!("a scrape failed: {error}");
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Reads the request head (whatever it asks for) and sends the metrics.
fn respond(mut connection: TcpStream, prometheus: &PrometheusHandle) -> std::io::Result<()> {
    connection.set_nonblocking(false)?;
    connection.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buffer = [0; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = connection.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..read]);
    }
    // Without the HTTP listener feature nothing drains histograms in the background.
    prometheus.run_upkeep();
    let body = prometheus.render();
    write!(
        connection,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// What a Prometheus server would get: the body of `GET /metrics`.
fn scrape(address: SocketAddr) -> Result<String, Box<dyn Error>> {
    let mut connection = TcpStream::connect(address)?;
    connection.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    connection.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("no HTTP response head")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("unexpected response: {head}").into());
    }
    Ok(body.to_string())
}

fn options() -> Result<Options, Box<dyn Error>> {
    let mut options = Options {
        port: 9898,
        serve_for: Duration::from_secs(5),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--port" => options.port = value()?.parse()?,
            "--serve-for" => {
                let text = value()?;
                let seconds = text.strip_suffix('s').unwrap_or(&text);
                options.serve_for = Duration::from_secs_f64(seconds.parse()?);
            }
            _ => {
                return Err(
                    format!("unknown argument {arg}; use --port N, --serve-for SECONDS").into(),
                )
            }
        }
    }
    Ok(options)
}
