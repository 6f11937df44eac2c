//! OAUTHBEARER tokens for sluice's Kafka clients (Amazon MSK with IAM, `source.kafka.auth.msk_iam`).
//!
//! librdkafka asks for a token when a client starts and again at 80% of the last token's
//! lifetime, on the thread that polls the client (the consumer's own thread, a producer's
//! polling thread). Every client sluice makes for a mapping's cluster — the consumer, the
//! failure-topic producer, `dlq` and `validate --connect` — uses a context that answers those
//! requests from the mapping's [`TokenSource`], so one setting covers them all. A client without
//! a source answers with an error naming the setting, and librdkafka reports the authentication
//! failure (a `/readyz` failure for a mapping), never a silent stall.

use rdkafka::ClientContext;
use rdkafka::client::OAuthToken;
use rdkafka::consumer::{Consumer, ConsumerContext};
use std::error::Error;
use std::sync::Arc;

/// A token as librdkafka wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub value: String,
    /// The principal the token names (MSK identifies the caller by the signature instead).
    pub principal: String,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

/// Makes fresh OAUTHBEARER tokens; called from librdkafka's polling threads, never from an
/// async task, so it may block briefly.
pub trait TokenSource: Send + Sync + 'static {
    fn token(&self) -> Result<Token, String>;
}

impl std::fmt::Debug for dyn TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSource")
    }
}

/// The token source of a mapping's cluster, when it authenticates with OAUTHBEARER.
pub type Tokens = Option<Arc<dyn TokenSource>>;

/// The answer to librdkafka's token refresh.
pub fn oauth_token(tokens: &Tokens) -> Result<OAuthToken, Box<dyn Error>> {
    let Some(source) = tokens else {
        return Err("sasl.mechanism OAUTHBEARER needs a token source: use source.kafka.auth: { msk_iam: {} }".into());
    };
    let token = source.token()?;
    Ok(OAuthToken {
        token: token.value,
        principal_name: token.principal,
        lifetime_ms: token.expires_at_ms,
    })
}

/// The context of every Kafka client sluice makes besides the mapping's consumer: it only
/// answers token refreshes.
#[derive(Debug, Clone, Default)]
pub struct ClientAuth {
    pub tokens: Tokens,
}

impl ClientContext for ClientAuth {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn Error>> {
        oauth_token(&self.tokens)
    }
}

impl ConsumerContext for ClientAuth {}

/// Lets a consumer that has not polled yet answer librdkafka's first token request (it comes
/// as an event on the consumer's queue): a metadata request made before that waits for a token
/// that never comes, and times out.
pub fn answer_token_request(consumer: &rdkafka::consumer::BaseConsumer<ClientAuth>) {
    if consumer.context().tokens.is_some() {
        let _ = consumer.poll(std::time::Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::BaseConsumer;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    struct Counting(AtomicUsize);

    impl TokenSource for Counting {
        fn token(&self) -> Result<Token, String> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Token {
                value: format!("token-{n}"),
                principal: "sluice".into(),
                expires_at_ms: crate::now_since_epoch().as_millis() as i64 + 900_000,
            })
        }
    }

    #[test]
    fn without_a_source_the_refresh_fails_naming_the_setting() {
        let error = oauth_token(&None).err().unwrap().to_string();
        assert!(error.contains("auth: { msk_iam"), "{error}");
        let tokens: Tokens = Some(Arc::new(Counting(AtomicUsize::new(0))));
        let token = oauth_token(&tokens).unwrap();
        assert_eq!(
            (token.token.as_str(), token.principal_name.as_str()),
            ("token-0", "sluice")
        );
    }

    // librdkafka asks the client's context for a token as the client starts: the wiring from
    // `sasl.mechanism: OAUTHBEARER` to the token source is real (the mock cluster speaks no
    // SASL, so nothing is authenticated here).
    #[test]
    fn an_oauthbearer_client_asks_its_context_for_a_token_when_it_polls() {
        let source = Arc::new(Counting(AtomicUsize::new(0)));
        let context = ClientAuth {
            tokens: Some(source.clone()),
        };
        let consumer: BaseConsumer<ClientAuth> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("group.id", "auth-test")
            .set("security.protocol", "SASL_PLAINTEXT")
            .set("sasl.mechanism", "OAUTHBEARER")
            .create_with_context(context)
            .expect("an OAUTHBEARER client builds");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while source.0.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            let _ = consumer.poll(Duration::from_millis(100));
        }
        assert!(
            source.0.load(Ordering::SeqCst) >= 1,
            "no token was asked for"
        );
    }

    #[test]
    fn scram_mechanisms_are_built_in() {
        for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
            let created: Result<BaseConsumer<ClientAuth>, _> = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:9")
                .set("group.id", "auth-test")
                .set("security.protocol", "SASL_SSL")
                .set("sasl.mechanism", mechanism)
                .set("sasl.username", "u")
                .set("sasl.password", "p")
                .create_with_context(ClientAuth::default());
            assert!(created.is_ok(), "{mechanism}: {:?}", created.err());
        }
    }
}
