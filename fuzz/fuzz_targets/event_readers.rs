//! The two readers of a message body agree (issue 19): `event::parse`, which reads a valid
//! event straight into its record, gives exactly what the tree-based reader gives (parse as
//! a `serde_json` object, then `event::from_object`): the same event, or the same problems
//! with the same messages.

#![no_main]

use els_bridge::event::{self, Institutions, InvalidEvent};
use els_bridge::input::parse_json_object;
use libfuzzer_sys::fuzz_target;

/// The configured institutions of the runs: any code, exactly one, or two.
const INSTITUTIONS: [Institutions; 3] =
    [Institutions::Any, Institutions::Known(&["H32128200338"]), Institutions::Known(&["H32128200338", "H32128200339"])];

fuzz_target!(|data: &[u8]| {
    for institutions in INSTITUTIONS {
        let typed = event::parse(data, institutions);
        let tree = parse_json_object(data).map_err(InvalidEvent::from).and_then(|object| event::from_object(&object, institutions));
        assert_eq!(typed, tree, "the readers disagree on {:?}", String::from_utf8_lossy(data));
    }
});
