
// --- Added by flumen's testkit (tests/tansu/end_txn_route.rs): Tansu 0.6.0's
// storage implements `txn_end`, but the broker registers no route for EndTxn
// (API key 26), so no transaction can be committed or aborted by a client.
// This route connects the two. Apache-2.0, like the file it is appended to.

/// Serves EndTxn (commit or abort a transaction) from the storage's `txn_end`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlumenEndTxnService;

impl tansu_sans_io::ApiKey for FlumenEndTxnService {
    const KEY: i16 = tansu_sans_io::EndTxnRequest::KEY;
}

impl<G> rama::Service<G, tansu_sans_io::EndTxnRequest> for FlumenEndTxnService
where
    G: Storage,
{
    type Response = tansu_sans_io::EndTxnResponse;
    type Error = tansu_storage::Error;

    async fn serve(
        &self,
        ctx: rama::Context<G>,
        req: tansu_sans_io::EndTxnRequest,
    ) -> Result<Self::Response, Self::Error> {
        ctx.state()
            .txn_end(
                req.transactional_id.as_str(),
                req.producer_id,
                req.producer_epoch,
                req.committed,
            )
            .await
            .map(|error_code| {
                tansu_sans_io::EndTxnResponse::default()
                    .throttle_time_ms(0)
                    .error_code(error_code.into())
            })
    }
}

pub fn flumen_end_txn<S>(
    builder: FrameRouteBuilder<(), Error>,
    storage: S,
) -> Result<FrameRouteBuilder<(), Error>, Error>
where
    S: Storage,
{
    builder
        .with_route(
            tansu_sans_io::EndTxnRequest::KEY,
            (
                MapErrLayer::new(Error::from),
                MapStateLayer::new(|_| storage),
                FrameRequestLayer::<tansu_sans_io::EndTxnRequest>::new(),
            )
                .into_layer(FlumenEndTxnService)
                .boxed(),
        )
        .map_err(Into::into)
}
