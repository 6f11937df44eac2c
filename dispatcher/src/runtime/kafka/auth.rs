//! Amazon MSK IAM authentication (`source.kafka.auth.msk_iam`): OAUTHBEARER tokens that are
//! SigV4-presigned `kafka-cluster:Connect` URLs, as AWS's MSK IAM SASL signers make them.
//!
//! Guarantees:
//! - a token is `https://kafka.<region>.amazonaws.com/?Action=kafka-cluster%3AConnect` presigned
//!   for the `kafka-cluster` service (query parameters, `host` signed, empty payload, 15 minute
//!   expiry), with `User-Agent` appended after signing, base64url-encoded without padding; its
//!   lifetime is the signing time (whole seconds) plus 15 minutes;
//! - credentials come from the default chain (environment, profile, web identity, the ECS task
//!   role, IMDS), loaded once per client and asked for on every refresh, so rotated role
//!   credentials are picked up; each ask is bounded by [`CREDENTIALS_TIMEOUT`];
//! - librdkafka refreshes at 80% of the lifetime (12 minutes); a refresh that fails is an error
//!   librdkafka reports and retries, shown on `/readyz` as a failing poll.

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sluice_sources::kafka::auth::{Token, TokenSource};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a token is valid (what AWS's signers use).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);
/// The longest one ask for credentials may take.
pub const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(10);
const SERVICE: &str = "kafka-cluster";
const ACTION: &str = "kafka-cluster:Connect";

/// Presigns `url` (a GET) for `service` in `region` at `time`, adding the signature's query
/// parameters to it.
pub fn presign(
    url: &mut reqwest::Url,
    service: &str,
    region: &str,
    credentials: &Credentials,
    time: SystemTime,
    expires_in: Duration,
    body: SignableBody<'_>,
) -> Result<(), String> {
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(expires_in);
    let identity = credentials.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| format!("signing parameters: {e}"))?;
    let request = SignableRequest::new("GET", url.as_str(), std::iter::empty(), body)
        .map_err(|e| format!("the URL {url} cannot be signed: {e}"))?;
    let (instructions, _) = sign(request, &params.into())
        .map_err(|e| format!("signing: {e}"))?
        .into_parts();
    let mut query = url.query_pairs_mut();
    for (name, value) in instructions.params() {
        query.append_pair(name, value);
    }
    Ok(())
}

/// The MSK IAM token for `region`, signed with `credentials` at `now`.
pub fn msk_token(
    region: &str,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<Token, String> {
    let mut url = reqwest::Url::parse(&format!("https://kafka.{region}.amazonaws.com/"))
        .map_err(|e| format!("region {region:?} makes no endpoint URL: {e}"))?;
    url.query_pairs_mut().append_pair("Action", ACTION);
    presign(
        &mut url,
        SERVICE,
        region,
        credentials,
        now,
        TOKEN_LIFETIME,
        SignableBody::Bytes(&[]),
    )?;
    url.query_pairs_mut().append_pair(
        "User-Agent",
        &format!("sluice/{}", env!("CARGO_PKG_VERSION")),
    );
    // X-Amz-Date has whole seconds: the token expires 15 minutes after that.
    let signed_at = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    Ok(Token {
        value: URL_SAFE_NO_PAD.encode(url.as_str()),
        principal: "sluice".into(),
        expires_at_ms: ((signed_at + TOKEN_LIFETIME.as_secs()) * 1000) as i64,
    })
}

/// Tokens for one Kafka client, from the default credential chain.
pub struct MskIamTokens {
    /// The cluster's region when the config names it (else the chain's region).
    region: Option<String>,
    /// Credentials to use instead of the default chain (tests).
    provider: Option<SharedCredentialsProvider>,
    /// A runtime of its own and the loaded chain: tokens are asked for on librdkafka's threads.
    loaded: Mutex<Option<Loaded>>,
}

struct Loaded {
    /// Always `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
    credentials: SharedCredentialsProvider,
    region: String,
    /// The last credentials, reused until [`CREDENTIALS_MARGIN`] before they expire (the
    /// chain itself does not cache: without this every refresh would ask ECS, IMDS or STS).
    cached: Option<Credentials>,
}

/// How long before their expiry credentials are asked for again.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(300);

impl Drop for Loaded {
    fn drop(&mut self) {
        // A runtime dropped where blocking is not allowed (a tokio worker, inside `block_on`:
        // the failure producer is dropped by a task) panics; this one has nothing left to run.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Loaded {
    /// Fresh enough credentials: the cached ones, or the chain's answer.
    fn credentials(&mut self) -> Result<Credentials, String> {
        let fresh = |c: &Credentials| {
            c.expiry().is_none_or(|expiry| {
                expiry
                    .duration_since(SystemTime::now())
                    .is_ok_and(|left| left > CREDENTIALS_MARGIN)
            })
        };
        if let Some(cached) = self.cached.as_ref().filter(|c| fresh(c)) {
            return Ok(cached.clone());
        }
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        let credentials = runtime
            .block_on(async {
                tokio::time::timeout(CREDENTIALS_TIMEOUT, self.credentials.provide_credentials())
                    .await
            })
            .map_err(|_| {
                format!("the AWS credential chain did not answer within {CREDENTIALS_TIMEOUT:?}")
            })?
            .map_err(|e| format!("no AWS credentials for MSK IAM: {e}"))?;
        self.cached = Some(credentials.clone());
        Ok(credentials)
    }
}

impl MskIamTokens {
    pub fn new(region: Option<String>) -> Self {
        Self {
            region,
            provider: None,
            loaded: Mutex::new(None),
        }
    }

    /// Tokens signed with `provider`'s credentials instead of the default chain's.
    pub fn with_provider(region: Option<String>, provider: SharedCredentialsProvider) -> Self {
        Self {
            provider: Some(provider),
            ..Self::new(region)
        }
    }

    fn load(&self) -> Result<Loaded, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime for the credential chain: {e}"))?;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(provider) = &self.provider {
            loader = loader.credentials_provider(provider.clone());
        }
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let config = runtime.block_on(loader.load());
        let region = config
            .region()
            .map(|r| r.to_string())
            .ok_or("no AWS region for MSK IAM: set source.kafka.auth.msk_iam.region (or msk_cluster_arn, or AWS_REGION)")?;
        let credentials = config
            .credentials_provider()
            .ok_or("the default AWS credential chain has no provider")?;
        Ok(Loaded {
            runtime: Some(runtime),
            credentials,
            region,
            cached: None,
        })
    }
}

impl TokenSource for MskIamTokens {
    fn token(&self) -> Result<Token, String> {
        // A thread of its own: librdkafka may ask from any thread, and blocking on a runtime
        // from a thread that is inside one (a blocking task) would panic.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut loaded = self.loaded.lock().expect("msk iam token lock");
                    if loaded.is_none() {
                        *loaded = Some(self.load()?);
                    }
                    let loaded = loaded.as_mut().expect("loaded above");
                    let credentials = loaded.credentials()?;
                    msk_token(&loaded.region, &credentials, SystemTime::now())
                })
                .join()
                .unwrap_or_else(|_| Err("the MSK IAM token thread panicked".into()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    // The presigner reproduces AWS's published SigV4 query-signing example (Amazon S3 API
    // reference, "Authenticating Requests: Using Query Parameters"): GET /test.txt on
    // examplebucket, 2013-05-24T00:00:00Z, 86400 s, UNSIGNED-PAYLOAD.
    #[test]
    fn the_presigner_matches_aws_published_example() {
        let credentials = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        );
        let mut url =
            reqwest::Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap();
        presign(
            &mut url,
            "s3",
            "us-east-1",
            &credentials,
            at(1_369_353_600),
            Duration::from_secs(86_400),
            SignableBody::UnsignedPayload,
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    #[test]
    fn an_msk_token_is_a_presigned_connect_url_in_base64url() {
        let credentials = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            Some("session-token/+=".into()),
            None,
            "test",
        );
        let now = at(1_700_000_000) + Duration::from_millis(700);
        let token = msk_token("eu-west-1", &credentials, now).unwrap();
        assert!(!token.value.contains(['=', '+', '/']), "{}", token.value);
        let url = String::from_utf8(URL_SAFE_NO_PAD.decode(&token.value).unwrap()).unwrap();
        let url = reqwest::Url::parse(&url).unwrap();
        assert_eq!(url.host_str(), Some("kafka.eu-west-1.amazonaws.com"));
        let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let names: Vec<&str> = query.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Action",
                "X-Amz-Algorithm",
                "X-Amz-Credential",
                "X-Amz-Date",
                "X-Amz-Expires",
                "X-Amz-SignedHeaders",
                "X-Amz-Signature",
                "X-Amz-Security-Token",
                "User-Agent"
            ]
        );
        let value = |name: &str| query.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(value("Action"), "kafka-cluster:Connect");
        assert_eq!(
            value("X-Amz-Credential"),
            "AKIAIOSFODNN7EXAMPLE/20231114/eu-west-1/kafka-cluster/aws4_request"
        );
        assert_eq!(value("X-Amz-Date"), "20231114T221320Z");
        assert_eq!(value("X-Amz-Expires"), "900");
        assert_eq!(value("X-Amz-SignedHeaders"), "host");
        assert_eq!(value("X-Amz-Security-Token"), "session-token/+=");
        assert_eq!(value("X-Amz-Signature").len(), 64);
        assert!(value("User-Agent").starts_with("sluice/"));
        assert_eq!(token.expires_at_ms, (1_700_000_000 + 900) * 1000);
        // The signature covers the time and the session token (the canonical query sorts the
        // parameters, so their order in the URL does not matter).
        let signature = |token: &Token| {
            let url = String::from_utf8(URL_SAFE_NO_PAD.decode(&token.value).unwrap()).unwrap();
            let url = reqwest::Url::parse(&url).unwrap();
            url.query_pairs()
                .find(|(n, _)| n == "X-Amz-Signature")
                .unwrap()
                .1
                .into_owned()
        };
        let later = msk_token("eu-west-1", &credentials, now + Duration::from_secs(1)).unwrap();
        assert_ne!(signature(&later), signature(&token));
        let other_session = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            Some("another-session".into()),
            None,
            "test",
        );
        let other = msk_token("eu-west-1", &other_session, now).unwrap();
        assert_ne!(signature(&other), signature(&token));
    }

    #[test]
    fn tokens_are_signed_with_the_loaded_credentials_from_any_thread() {
        let provider = SharedCredentialsProvider::new(Credentials::new(
            "AKIDCHAIN",
            "secret",
            None,
            None,
            "test",
        ));
        let tokens = MskIamTokens::with_provider(Some("ap-south-1".into()), provider);
        let token = tokens.token().unwrap();
        let url = String::from_utf8(URL_SAFE_NO_PAD.decode(&token.value).unwrap()).unwrap();
        assert!(url.contains("X-Amz-Credential=AKIDCHAIN%2F"), "{url}");
        assert!(
            url.starts_with("https://kafka.ap-south-1.amazonaws.com/"),
            "{url}"
        );
        // Asked for from inside a runtime (as a blocking task would), it still works; dropped
        // there (as the failure producer is, by a task), it does not panic.
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let again = tokens.token().unwrap();
            assert!(again.expires_at_ms >= token.expires_at_ms);
            drop(tokens);
        });
    }

    #[test]
    fn expiring_credentials_are_asked_for_again_and_lasting_ones_are_kept() {
        #[derive(Debug)]
        struct Counting(
            std::sync::Arc<std::sync::atomic::AtomicU32>,
            Option<SystemTime>,
        );
        impl ProvideCredentials for Counting {
            fn provide_credentials<'a>(
                &'a self,
            ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
            where
                Self: 'a,
            {
                let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                aws_credential_types::provider::future::ProvideCredentials::ready(Ok(
                    Credentials::new(format!("AKID{n}"), "secret", None, self.1, "test"),
                ))
            }
        }
        for (expiry, asked) in [
            (None, 1),
            (Some(SystemTime::now() + Duration::from_secs(3600)), 1),
            (Some(SystemTime::now() + Duration::from_secs(60)), 3),
        ] {
            let count = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
            let tokens = MskIamTokens::with_provider(
                Some("eu-west-1".into()),
                SharedCredentialsProvider::new(Counting(count.clone(), expiry)),
            );
            for _ in 0..3 {
                tokens.token().unwrap();
            }
            assert_eq!(
                count.load(std::sync::atomic::Ordering::SeqCst),
                asked,
                "{expiry:?}"
            );
        }
    }
}
