//! A well-formed component that targets the wrong world (`wit/thing.wit`): it exports
//! `stompbox:other/thing` and nothing the node looks for, so loading it as a tenant plugin must
//! fail with a clear error.

wit_bindgen::generate!({
    world: "wrong",
    path: "wit",
});

use exports::stompbox::other::thing::Guest;

struct Wrong;

impl Guest for Wrong {
    fn poke(x: u32) -> u32 {
        x.wrapping_add(1)
    }
}

export!(Wrong);
