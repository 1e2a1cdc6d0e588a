//! A simulated-radio H4 server for manual tests and measurements:
//!
//! ```text
//! cargo run --release -p periwire-bt --example h4_sim_server -- 127.0.0.1:9000 [/tmp/hci.sock]
//! bumble-controller-info tcp-client:127.0.0.1:9000
//! ```
//!
//! Every client that connects gets its own adapter (00:50:57:00:00:00 + n) on one radio.

use periwire_bt::{AdapterPlan, BdAddr, H4Server, Medium, SharedRadio};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let tcp = args.next().unwrap_or_else(|| "127.0.0.1:9000".to_owned());
    let tcp: std::net::SocketAddr = tcp
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let base = BdAddr::parse_str("00:50:57:00:00:00").unwrap_or_default();
    let radio = SharedRadio::new();
    let server = H4Server::bind_tcp(
        tcp,
        Medium::Simulated(radio.clone()),
        AdapterPlan::new(base, "periwire"),
    )
    .await?;
    println!("listening on tcp {}", server.local_addr().unwrap_or(tcp));
    let unix = match args.next() {
        Some(path) => {
            let s = H4Server::bind_unix(
                path.as_ref(),
                Medium::Simulated(radio.clone()),
                AdapterPlan::new(base, "periwire-unix"),
            )?;
            println!("listening on unix {path}");
            Some(tokio::spawn(s.run()))
        }
        None => None,
    };
    server.run().await?;
    if let Some(u) = unix {
        u.abort();
    }
    Ok(())
}
