//! Arbitrary bytes from a "server" must never panic the client's read path:
//! the CONNECTED check (version and heart-beat negotiation), then RECEIPT,
//! ERROR and MESSAGE handling with live subscriptions (auto and
//! client-individual, so ACK headers are built) and a receipt in flight.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    stomp_client::fuzzing::read_path(data);
});
