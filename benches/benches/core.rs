//! qpq-core: MLS under the X-Wing and X25519 suites in one run, sealed sender, and key
//! transparency at one million leaves.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use qpq_core::identity::IdentityKey;
use qpq_core::kem::HybridSecretKey;
use qpq_core::kt::MerkleLog;
use qpq_core::mls::{Group, MlsMember, Suite};
use qpq_core::sealed::{self, ReplayGuard};
use rusqlite::Connection;

const SUITES: [(Suite, &str); 2] = [(Suite::XWing, "xwing"), (Suite::X25519, "x25519")];

fn member(name: String, suite: Suite) -> MlsMember {
    MlsMember::create(
        Connection::open_in_memory().unwrap(),
        name.as_bytes(),
        &qpq_core::identity::IdentityKey::generate(),
        suite,
    )
    .unwrap()
}

/// A group of `size` members as seen by its creator (others' key packages only).
fn group_of(size: usize, suite: Suite) -> (MlsMember, Group) {
    let creator = member("creator".into(), suite);
    let mut group = creator.create_group(b"bench").unwrap();
    if size > 1 {
        let packages: Vec<Vec<u8>> = (1..size)
            .map(|i| member(format!("m{i}"), suite).key_package().unwrap())
            .collect();
        let refs: Vec<&[u8]> = packages.iter().map(Vec::as_slice).collect();
        group.add_members(&creator, &refs).unwrap();
    }
    (creator, group)
}

fn mls(c: &mut Criterion) {
    let mut g = c.benchmark_group("mls");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (suite, name) in SUITES {
        let m = member("kp".into(), suite);
        g.bench_function(BenchmarkId::new("key_package", name), |b| {
            b.iter(|| m.key_package().unwrap())
        });

        for size in [2usize, 16, 64, 256] {
            g.bench_function(BenchmarkId::new(format!("add_member/{name}"), size), |b| {
                b.iter_batched(
                    || {
                        let (creator, group) = group_of(size - 1, suite);
                        let kp = member("new".into(), suite).key_package().unwrap();
                        (creator, group, kp)
                    },
                    |(creator, mut group, kp)| group.add_members(&creator, &[&kp]).unwrap(),
                    BatchSize::PerIteration,
                );
            });
        }

        let alice = member("alice".into(), suite);
        let bob = member("bob".into(), suite);
        let mut a = alice.create_group(b"pair").unwrap();
        let (_, welcome) = a
            .add_members(&alice, &[&bob.key_package().unwrap()])
            .unwrap();
        let mut bg = bob.join(&welcome).unwrap().0;
        let message = vec![0x42u8; 1024];
        // Decrypting first: encrypting alone afterwards runs alice's ratchet far ahead of bob's.
        g.bench_function(BenchmarkId::new("encrypt_decrypt_1KiB", name), |b| {
            b.iter(|| {
                let ct = a.encrypt(&alice, &message).unwrap();
                bg.process(&bob, &ct).unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("encrypt_1KiB", name), |b| {
            b.iter(|| a.encrypt(&alice, &message).unwrap())
        });
    }
    g.finish();
}

fn sealed_sender(c: &mut Criterion) {
    let mut g = c.benchmark_group("sealed_sender");
    let sender = IdentityKey::generate();
    let recipient = HybridSecretKey::generate();
    let public = recipient.public();
    let payload = vec![0x17u8; 1024];
    g.bench_function("seal_1KiB", |b| {
        b.iter(|| sealed::seal(&sender, &public, 1_000, &payload).unwrap())
    });
    g.bench_function("open_1KiB", |b| {
        b.iter_batched(
            || sealed::seal(&sender, &public, 1_000, &payload).unwrap(),
            |envelope| {
                sealed::open(&recipient, &envelope, &mut ReplayGuard::default(), 1_000).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn key_transparency(c: &mut Criterion) {
    let mut g = c.benchmark_group("kt_1M");
    let mut log = MerkleLog::new();
    for i in 0u32..1_000_000 {
        log.append(&i.to_be_bytes());
    }
    let mut n = 0u64;
    g.bench_function("append", |b| {
        b.iter(|| {
            n += 1;
            log.append(&n.to_be_bytes())
        })
    });
    let size = log.size();
    let root = log.root();
    let mut index = 0u64;
    g.bench_function("inclusion_proof", |b| {
        b.iter(|| {
            index = (index + 7919) % size;
            log.inclusion_proof(index, size).unwrap()
        })
    });
    g.bench_function("prove_and_verify", |b| {
        b.iter(|| {
            index = (index + 7919) % size;
            let proof = log.inclusion_proof(index, size).unwrap();
            proof.verify(&log.leaf(index).unwrap(), &root).unwrap()
        })
    });
    g.bench_function("consistency_proof", |b| {
        b.iter(|| {
            index = (index + 7919) % size;
            log.consistency_proof(index.max(1), size).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, mls, sealed_sender, key_transparency);
criterion_main!(benches);
