//! Fluxy worker (skeleton).
use worker::*;

#[event(fetch)]
async fn fetch(_req: Request, _env: Env, _ctx: Context) -> Result<Response> {
    let _ = fluxy_room::FAULTS.len();
    Response::ok("ok")
}
