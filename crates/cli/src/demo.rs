//! The demo (written with the client issue).

use crate::{Failure, Global};

pub(crate) async fn run(_g: &Global) -> Result<(), Failure> {
    Err(Failure::new("the demo is not written yet"))
}
