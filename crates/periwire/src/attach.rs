//! `periwire attach`, `detach` and `port`: the client side, through this machine's vhci-hcd.

use periwire_vhci::{Event, Remote, Transport, Vhci};
use periwire_wire::usbip::BusId;

use crate::AnyError;

/// Imports `busid` from `remote` over `transport` and attaches it here once; the vhci port
/// it got. Over TLS the relay runs as a task of this process, so the device stays attached
/// while the process runs (`periwire ui`).
pub async fn attach_once(
    remote: &str,
    busid: &str,
    transport: &Transport,
) -> Result<u32, AnyError> {
    let remote = Remote::parse(remote)?;
    let busid = BusId::new(busid).map_err(|e| format!("bus id {busid:?}: {e}"))?;
    let vhci = Vhci::system();
    let attachment = match transport {
        Transport::Plain => periwire_vhci::attach(&vhci, &remote, &busid).await?,
        // Dropping the relay's handle leaves the task running.
        Transport::Tls(tls) => {
            periwire_vhci::attach_tls(&vhci, &remote, &busid, tls)
                .await?
                .0
        }
    };
    Ok(attachment.port)
}

/// The vhci ports in use, as `periwire port --json` and the page show them.
pub fn port_rows() -> Result<Vec<serde_json::Value>, AnyError> {
    let attached = Vhci::system().attached()?;
    Ok(attached
        .iter()
        .map(|a| {
            serde_json::json!({
                "port": a.port.number,
                "busid": a.record.as_ref().map(|r| r.busid.as_str()),
                "remote": a.record.as_ref().map(|r| format!("{}:{}", r.host, r.service)),
                "speed": periwire_vhci::status::speed_name(a.port.speed),
                "local_busid": a.port.local_busid,
            })
        })
        .collect())
}

/// Imports `busid` from `remote` over `transport` and attaches it here; with `persist`,
/// stays and attaches it again whenever it is lost, until SIGINT or SIGTERM. Over TLS
/// without `persist`, stays until the TLS session ends (a detach, the server gone) or a
/// signal.
pub async fn attach(
    remote: &str,
    busid: &str,
    persist: bool,
    transport: Transport,
) -> Result<(), AnyError> {
    let remote = Remote::parse(remote)?;
    let busid = BusId::new(busid).map_err(|e| format!("bus id {busid:?}: {e}"))?;
    let vhci = Vhci::system();
    let url = format!("usbip://{remote}/{busid}");
    let (attachment, relay) = match &transport {
        Transport::Plain => (periwire_vhci::attach(&vhci, &remote, &busid).await?, None),
        Transport::Tls(tls) => {
            let (a, relay) = periwire_vhci::attach_tls(&vhci, &remote, &busid, tls).await?;
            (a, Some(relay))
        }
    };
    println!("periwire: attached {url} on port {}", attachment.port);
    if !persist {
        if let Some(relay) = relay {
            tokio::select! {
                _ = relay => println!("periwire: TLS session of {url} ended"),
                () = crate::serve::shutdown_signal() => {}
            }
        }
        return Ok(());
    }
    let report = |event: Event<'_>| match event {
        Event::Lost(a) => println!("periwire: lost {url} on port {}", a.port),
        Event::Reattached(a) => println!("periwire: re-attached {url} on port {}", a.port),
        Event::RetryFailed { error, retry_in } => {
            tracing::info!(%error, ?retry_in, "re-attach failed; trying again");
        }
    };
    tokio::select! {
        result = periwire_vhci::keep_attached(&vhci, &remote, &busid, &transport, attachment, report) => result?,
        () = crate::serve::shutdown_signal() => {}
    }
    Ok(())
}

/// Detaches vhci port `port`.
pub fn detach(port: u32) -> Result<(), AnyError> {
    Vhci::system().detach(port)?;
    println!("periwire: detached port {port}");
    Ok(())
}

/// Lists the vhci ports in use, as `usbip port` does.
pub fn ports(json: bool) -> Result<(), AnyError> {
    if json {
        println!("{}", serde_json::to_string_pretty(&port_rows()?)?);
        return Ok(());
    }
    let attached = Vhci::system().attached()?;
    if attached.is_empty() {
        println!("no devices attached");
    }
    for a in &attached {
        let origin = a.record.as_ref().map_or_else(
            || "unknown origin".to_owned(),
            |r| format!("usbip://{}:{}/{}", r.host, r.service, r.busid),
        );
        println!(
            "port {}: {origin} ({}), here as {}",
            a.port.number,
            periwire_vhci::status::speed_name(a.port.speed),
            a.port.local_busid
        );
    }
    Ok(())
}
