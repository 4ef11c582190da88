//! Benchmarks of the wire protocol: encode+decode of one transfer request frame, and a pipelined
//! client against an echo-style server over loopback with 1 and 64 requests in flight.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use net::{
    Client, ClientConfig, Frame, Handler, Message, Server, ServerConfig, Transfer, TransferOutcome,
    TransferResult,
};

fn transfer(id: u128) -> Transfer {
    Transfer {
        id,
        debit: 1001,
        credit: 2002,
        amount: 2500,
    }
}

fn encode_decode(criterion: &mut Criterion) {
    let frame = Frame::new(7, transfer(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10));
    let mut buf = BytesMut::with_capacity(256);
    let mut group = criterion.benchmark_group("net_frame");
    group.throughput(Throughput::Elements(1));
    group.bench_function("transfer_request_encode_decode", |bencher| {
        bencher.iter(|| {
            black_box(&frame).encode(&mut buf).unwrap();
            let decoded = Frame::decode(&mut buf).unwrap().unwrap();
            black_box(decoded)
        })
    });
    group.finish();
}

/// Answers every transfer at once: measures the transport, not any work behind it.
struct Echo;

impl Handler for Echo {
    async fn handle(&self, request: Message) -> Message {
        match request {
            Message::Transfer(transfer) => TransferResult {
                id: transfer.id,
                outcome: TransferOutcome::Committed,
            }
            .into(),
            other => other,
        }
    }
}

fn pipelined_loopback(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (address, _shutdown) = runtime.block_on(async {
        let server = Server::bind("127.0.0.1:0", ServerConfig::default(), Echo)
            .await
            .unwrap();
        let address = server.local_addr().unwrap();
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = stop.await;
        }));
        (address, shutdown)
    });
    let client = runtime
        .block_on(Client::connect(address, ClientConfig::default()))
        .unwrap();

    let mut group = criterion.benchmark_group("net_loopback_round_trip");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for in_flight in [1_u64, 64] {
        group.bench_function(format!("in_flight_{in_flight}"), |bencher| {
            bencher.iter_custom(|iterations| {
                runtime.block_on(async {
                    let start = Instant::now();
                    let mut workers = tokio::task::JoinSet::new();
                    for worker in 0..in_flight {
                        let client = client.clone();
                        // Spread `iterations` calls over the workers, each keeping one in flight.
                        let calls =
                            iterations / in_flight + u64::from(worker < iterations % in_flight);
                        workers.spawn(async move {
                            for call in 0..calls {
                                let id = u128::from(worker) << 64 | u128::from(call);
                                black_box(client.call(transfer(id)).await.unwrap());
                            }
                        });
                    }
                    while workers.join_next().await.is_some() {}
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode_decode, pipelined_loopback);
criterion_main!(benches);
