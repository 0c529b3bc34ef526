//! Entry parsing and quarantine on any entry: the input is cut into fields (a length byte
//! before each name and each value). The entry is an event that validates, or a quarantine
//! record that decodes back to exactly its bytes (or, over the size limit, to bounded
//! prefixes of them); never a panic.
#![no_main]

use eventflow::quarantine::{decode_record, triage, OVERSIZED_PREFIX_BYTES};
use eventflow::transport::StreamEntry;
use libfuzzer_sys::fuzz_target;

fn fields(mut data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut take = || {
        let (&len, rest) = data.split_first()?;
        // Lengths up to 255, with 255 meaning "the rest", so one value can be large.
        let len = if len == 255 {
            rest.len()
        } else {
            usize::from(len).min(rest.len())
        };
        let (part, rest) = rest.split_at(len);
        data = rest;
        Some(part.to_vec())
    };
    let mut fields = Vec::new();
    while let (Some(name), Some(value)) = (take(), take()) {
        fields.push((name, value));
    }
    fields
}

fuzz_target!(|data: &[u8]| {
    let entry = StreamEntry {
        id: "1-0".into(),
        fields: fields(data),
    };
    // A small limit, so that the oversized path is reached too.
    match triage(&entry, 1024) {
        Ok(event) => assert!(event.validate_received().is_ok(), "{event:?}"),
        Err(record) => {
            let (kept, oversized) = decode_record(&record.raw_fields).expect("decodes");
            match oversized {
                None => assert_eq!(kept, entry.fields),
                Some(oversized) => {
                    assert_eq!(oversized.entry_bytes, entry.size() as u64);
                    for ((name, prefix), (full_name, full)) in kept.iter().zip(&entry.fields) {
                        assert!(
                            name.len() <= OVERSIZED_PREFIX_BYTES && full_name.starts_with(name)
                        );
                        assert!(prefix.len() <= OVERSIZED_PREFIX_BYTES && full.starts_with(prefix));
                    }
                }
            }
        }
    }
});
