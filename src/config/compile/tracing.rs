//! Compiling `tracing:`: the OTLP exporter and sampling.

use super::*;
use crate::observe::trace::{OtlpProtocol, TracingSettings};

impl Compiler<'_> {
    /// `tracing:`; `None` (off) when absent.
    pub(super) fn tracing(&mut self, raw: &RawConfig) -> Option<TracingSettings> {
        let t = raw.tracing.as_ref()?;
        let protocol = match t.protocol.as_deref() {
            None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some("grpc") => OtlpProtocol::Grpc,
            Some(other) => {
                self.invalid(
                    "tracing.protocol",
                    format!("`{other}` is not an OTLP protocol: `http/protobuf` or `grpc`"),
                );
                OtlpProtocol::HttpProtobuf
            }
        };
        let mut endpoint = t.endpoint.trim().to_string();
        match endpoint.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                // OTLP/HTTP: the signal path is part of the URL; a base URL gets it appended,
                // as the OTEL_EXPORTER_OTLP_ENDPOINT convention does.
                if protocol == OtlpProtocol::HttpProtobuf && !u.path().ends_with("/v1/traces") {
                    endpoint = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
                }
            }
            _ => self.invalid(
                "tracing.endpoint",
                format!(
                    "`{}` is not an http:// or https:// URL of an OTLP collector (e.g. `http://otel-collector:4318`)",
                    redact_url(&endpoint)
                ),
            ),
        }
        let mut headers = Vec::new();
        for (k, v) in &t.headers {
            let path = format!("tracing.headers.{k}");
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                self.invalid(&path, format!("`{k}` is not a header name"));
                continue;
            }
            match secret::resolve(v, &self.base) {
                Ok(v) if http::HeaderValue::from_str(&v).is_ok() => headers.push((k.clone(), v)),
                Ok(_) => self.invalid(&path, "not a valid header value"),
                Err(e) => self.invalid(&path, e),
            }
        }
        let sample_ratio = t.sample_ratio.unwrap_or(0.01);
        if !(0.0..=1.0).contains(&sample_ratio) {
            self.invalid(
                "tracing.sample_ratio",
                format!(
                    "{sample_ratio} is not between 0 and 1 (0.01 traces one call in a hundred)"
                ),
            );
        }
        let queue_size = t.queue_size.unwrap_or(2048);
        if queue_size == 0 {
            self.invalid("tracing.queue_size", "must be at least 1");
        }
        let batch_size = t.batch_size.unwrap_or(512);
        if batch_size == 0 || batch_size > queue_size {
            self.invalid(
                "tracing.batch_size",
                format!("must be between 1 and queue_size ({queue_size})"),
            );
        }
        if t.service_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            self.invalid("tracing.service_name", "must not be empty");
        }
        Some(TracingSettings {
            endpoint,
            protocol,
            headers,
            sample_ratio: sample_ratio.clamp(0.0, 1.0),
            respect_parent_sampling: t.respect_parent_sampling.unwrap_or(false),
            service_name: t.service_name.clone(),
            queue_size,
            batch_size,
            export_interval: self.duration(
                "tracing.export_interval",
                &t.export_interval,
                Duration::from_secs(5),
            ),
            export_timeout: self.duration(
                "tracing.export_timeout",
                &t.export_timeout,
                Duration::from_secs(10),
            ),
        })
    }
}
