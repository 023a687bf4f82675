//! Where job documents and results are kept: a local folder (through `object_store`, the
//! embedded backend) or an S3 bucket (through the AWS SDK, the AWS backend). Both are addressed
//! by the same keys (`documents/<id>`, `results/<id>.json`); a write to a key replaces what was
//! there, so a repeated result write is harmless.

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;

use crate::error::RelayError;

/// The document and result store.
#[derive(Debug)]
pub enum Objects {
    /// A folder on this machine.
    Local(LocalFileSystem),
    /// An S3 bucket.
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
    },
}

impl Objects {
    /// The folder `dir` (made when missing).
    pub fn local(dir: &std::path::Path) -> Result<Objects, RelayError> {
        std::fs::create_dir_all(dir).map_err(|err| {
            RelayError::Startup(format!(
                "cannot make the jobs' object folder {}: {err}",
                dir.display()
            ))
        })?;
        LocalFileSystem::new_with_prefix(dir)
            .map(Objects::Local)
            .map_err(|source| RelayError::JobObjects {
                location: dir.display().to_string(),
                source,
            })
    }

    /// Writes `bytes` at `location`, replacing what was there.
    pub async fn put(&self, location: &str, bytes: Bytes) -> Result<(), RelayError> {
        match self {
            Objects::Local(folder) => folder
                .put(&ObjectPath::from(location), bytes.into())
                .await
                .map(|_| ())
                .map_err(|source| local_failed(location, source)),
            Objects::S3 { client, bucket } => client
                .put_object()
                .bucket(bucket)
                .key(location)
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map(|_| ())
                .map_err(|source| s3_failed(location, source)),
        }
    }

    /// The object at `location`; `None` when there is none.
    pub async fn get(&self, location: &str) -> Result<Option<Bytes>, RelayError> {
        match self {
            Objects::Local(folder) => {
                let found = match folder.get(&ObjectPath::from(location)).await {
                    Ok(found) => found,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(source) => return Err(local_failed(location, source)),
                };
                found
                    .bytes()
                    .await
                    .map(Some)
                    .map_err(|source| local_failed(location, source))
            }
            Objects::S3 { client, bucket } => {
                let found = client
                    .get_object()
                    .bucket(bucket)
                    .key(location)
                    .send()
                    .await;
                let found = match found {
                    Ok(found) => found,
                    Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                        return Ok(None);
                    }
                    Err(source) => return Err(s3_failed(location, source)),
                };
                found
                    .body
                    .collect()
                    .await
                    .map(|body| Some(body.into_bytes()))
                    .map_err(|source| RelayError::JobS3Body {
                        location: location.to_string(),
                        source,
                    })
            }
        }
    }

    /// The size in bytes of the object at `location`; `None` when there is none.
    pub async fn size(&self, location: &str) -> Result<Option<u64>, RelayError> {
        match self {
            Objects::Local(folder) => match folder.head(&ObjectPath::from(location)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(source) => Err(local_failed(location, source)),
            },
            Objects::S3 { client, bucket } => {
                match client
                    .head_object()
                    .bucket(bucket)
                    .key(location)
                    .send()
                    .await
                {
                    Ok(head) => Ok(Some(
                        head.content_length()
                            .and_then(|length| u64::try_from(length).ok())
                            .unwrap_or(0),
                    )),
                    Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => {
                        Ok(None)
                    }
                    Err(source) => Err(s3_failed(location, source)),
                }
            }
        }
    }

    /// Removes the object at `location` (a document of a job that was refused).
    pub async fn delete(&self, location: &str) -> Result<(), RelayError> {
        match self {
            Objects::Local(folder) => folder
                .delete(&ObjectPath::from(location))
                .await
                .map_err(|source| local_failed(location, source)),
            Objects::S3 { client, bucket } => client
                .delete_object()
                .bucket(bucket)
                .key(location)
                .send()
                .await
                .map(|_| ())
                .map_err(|source| s3_failed(location, source)),
        }
    }
}

fn local_failed(location: &str, source: object_store::Error) -> RelayError {
    RelayError::JobObjects {
        location: location.to_string(),
        source,
    }
}

fn s3_failed<E, R>(location: &str, source: aws_sdk_s3::error::SdkError<E, R>) -> RelayError
where
    aws_sdk_s3::Error: From<aws_sdk_s3::error::SdkError<E, R>>,
{
    RelayError::JobS3 {
        location: location.to_string(),
        source: Box::new(source.into()),
    }
}
