//! The Redis reply parsers on any RESP2/RESP3 reply the redis crate's own parser makes of the
//! input: each parses it or refuses it, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = redis::parse_redis_value(data) {
        eventflow::transport::fuzz_reply_parsers(value);
    }
});
