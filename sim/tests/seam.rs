//! The seam, proven: three gateway nodes running the unchanged node code over turmoil's
//! network, one sample-service host and a shared bus. A service registers through gateway A
//! and a client calls it through gateway C.

use std::time::{Duration, SystemTime};

use switchyard::bus::MemoryBus;
use switchyard_sim::{CONTROL_PORT, PUBLIC_PORT, gateway_host, http_get, service_host};

const GATEWAYS: [&str; 3] = ["gw-a", "gw-b", "gw-c"];

/// Runs the scenario with `seed`; returns what the client observed, for comparing runs.
fn scenario(seed: u64) -> Vec<String> {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(60))
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .rng_seed(seed)
        .build();
    let bus = MemoryBus::new();
    for (i, name) in GATEWAYS.into_iter().enumerate() {
        let bus = bus.clone();
        sim.host(name, move || {
            gateway_host(name, bus.clone(), seed + i as u64)
        });
    }
    sim.host("svc-1", || service_host("sample", "svc-1", "svc-1", "gw-a"));

    let observed = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let log = observed.clone();
    sim.client("client", async move {
        // Wait (in simulated time, bounded) until gateway C routes to the service that
        // registered through gateway A.
        let mut answer = None;
        for _ in 0..200 {
            if let Ok((200, body)) = http_get("gw-c", PUBLIC_PORT, "/sample/hello").await {
                answer = Some(body);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let body = answer.ok_or("gateway C never routed to the service")?;
        let hello: serde_json::Value = serde_json::from_slice(&body)?;
        assert_eq!(hello["instance"], "svc-1");
        assert_eq!(hello["message"], "hello from sample/svc-1");
        log.borrow_mut()
            .push(format!("hello {}", hello["instance"]));

        // An unknown service is a 404 through every gateway.
        for gw in GATEWAYS {
            let (status, _) = http_get(gw, PUBLIC_PORT, "/nosuch/x").await?;
            assert_eq!(status, 404, "{gw}");
        }

        // Every gateway holds the same registry.
        let mut digests = Vec::new();
        for gw in GATEWAYS {
            let (status, body) = http_get(gw, CONTROL_PORT, "/v1/cluster").await?;
            assert_eq!(status, 200);
            let cluster: serde_json::Value = serde_json::from_slice(&body)?;
            assert_eq!(cluster["node_id"], gw);
            assert_eq!(cluster["ready"], true);
            digests.push(
                cluster["registry_digest"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        assert!(digests.iter().all(|d| d == &digests[0]), "{digests:?}");
        log.borrow_mut().push(format!("digest {}", digests[0]));
        Ok(())
    });
    if let Err(error) = sim.run() {
        panic!("seed {seed}: {error}\nreplay: cargo test -p switchyard-sim --test seam");
    }
    observed.take()
}

#[test]
fn registered_through_a_called_through_c() {
    let observed = scenario(1);
    assert_eq!(observed.len(), 2, "{observed:?}");
}

#[test]
fn the_same_seed_gives_the_same_observations() {
    assert_eq!(scenario(42), scenario(42));
}
