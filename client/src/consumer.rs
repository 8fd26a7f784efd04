//! Reading: positions, long polls, streams that resume without gaps or
//! repeats, and consumer groups.

use std::collections::VecDeque;
use std::time::Duration;

use futures::Stream;
use raftstream_proto::v1 as pb;

use crate::client::Client;
use crate::client::Retry;
use crate::client::Target;
use crate::client::timed;
use crate::client::topic_ref;
use crate::error::Error;
use crate::error::Result;

/// Where reading starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    Offset(u64),
    /// After the message with this id (`"<partition>-<offset>"`).
    AfterMessage(String),
    /// At the first message stamped at or after this time (ms since epoch).
    Timestamp(i64),
    Earliest,
    Latest,
}

impl Position {
    fn to_pb(&self) -> pb::Position {
        use pb::position::Position as P;
        let position = match self {
            Position::Offset(o) => P::Offset(*o),
            Position::AfterMessage(id) => P::AfterMessageId(id.clone()),
            Position::Timestamp(ts) => P::SinceTimestampMs(*ts),
            Position::Earliest => P::Earliest(true),
            Position::Latest => P::Latest(true),
        };
        pb::Position {
            position: Some(position),
        }
    }
}

/// Reads one partition in order, remembering where it got to.
#[derive(Debug, Clone)]
pub struct Consumer {
    client: Client,
    topic: pb::Topic,
    partition: u32,
    next: Position,
}

impl Consumer {
    pub async fn new(
        client: &Client,
        topic: &str,
        partition: u32,
        start: Position,
    ) -> Result<Consumer> {
        let topic = client.topic(topic).await?;
        if partition as usize >= topic.partitions.len() {
            return Err(Error::InvalidArgument(format!(
                "topic {} has {} partitions; there is no partition {partition}",
                topic.name,
                topic.partitions.len()
            )));
        }
        Ok(Consumer {
            client: client.clone(),
            topic,
            partition,
            next: start,
        })
    }

    /// Where the next poll starts.
    pub fn position(&self) -> &Position {
        &self.next
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Up to `max` committed messages; waits up to `wait` (at most 60 s)
    /// when none is there yet, returning as soon as one commits.
    pub async fn poll(&mut self, max: u32, wait: Duration) -> Result<Vec<pb::Message>> {
        let group = self.topic.partitions[self.partition as usize].group_id;
        let request = pb::ConsumeRequest {
            topic: Some(pb::TopicRef {
                topic: Some(pb::topic_ref::Topic::Id(self.topic.id)),
            }),
            partition: self.partition,
            position: Some(self.next.to_pb()),
            max_messages: max,
            wait_ms: wait.as_millis().min(60_000) as u32,
            max_bytes: 0,
        };
        let response = self
            .client
            .call(Target::Group(group), Retry::Idempotent, |mut g, timeout| {
                let r = timed(request.clone(), timeout + wait);
                async move { g.consume(r).await }
            })
            .await?;
        // Resolve the position once, so later polls neither skip nor repeat.
        self.next = Position::Offset(response.next_offset);
        Ok(response.messages)
    }

    /// Commits this consumer's position for `group`.
    pub async fn commit(&self, group: &str) -> Result<()> {
        let Position::Offset(offset) = self.next else {
            return Err(Error::InvalidArgument(
                "poll once before committing a position".into(),
            ));
        };
        self.client
            .commit_offset(&self.topic.name, group, self.partition, offset)
            .await
    }

    /// An endless stream of messages from the current position. It long-polls,
    /// retries through leader changes and reconnects, and resumes after the
    /// last message it yielded, so it neither skips nor repeats one.
    pub fn into_stream(self) -> impl Stream<Item = Result<pb::Message>> {
        let state = Some((self, VecDeque::new()));
        futures::stream::unfold(state, |state| async move {
            // `None` once a permanent error was yielded: the stream ends.
            let (mut consumer, mut buffered) = state?;
            loop {
                if let Some(message) = buffered.pop_front() {
                    return Some((Ok(message), Some((consumer, buffered))));
                }
                match consumer.poll(1000, Duration::from_secs(30)).await {
                    Ok(messages) => buffered.extend(messages),
                    Err(e) if e.is_retryable() => continue,
                    Err(e) => return Some((Err(e), None)),
                }
            }
        })
    }
}

impl Client {
    /// Commits `offset` as the group's next offset to read on `partition`.
    /// Retried after an unknown outcome; the commit carries this client's
    /// writer id and sequence, so a late first attempt cannot later overwrite
    /// a newer commit made through this client.
    pub async fn commit_offset(
        &self,
        topic: &str,
        group: &str,
        partition: u32,
        offset: u64,
    ) -> Result<()> {
        let (writer_id, writer_seq) = self.next_commit_order();
        let request = pb::CommitOffsetRequest {
            topic: Some(topic_ref(topic)),
            group: group.to_string(),
            partition,
            offset,
            writer_id,
            writer_seq,
        };
        self.call(Target::Any, Retry::Idempotent, |mut g, _| {
            let r = request.clone();
            async move { g.commit_offset(r).await }
        })
        .await
        .map(|_| ())
    }

    /// The consumer groups with committed offsets on the topic.
    pub async fn list_groups(&self, topic: &str) -> Result<Vec<String>> {
        let request = pb::ListGroupsRequest {
            topic: Some(topic_ref(topic)),
            partition: None,
        };
        let response = self
            .call(Target::Any, Retry::Idempotent, |mut g, _| {
                let r = request.clone();
                async move { g.list_groups(r).await }
            })
            .await?;
        Ok(response.groups)
    }

    /// The group's committed offsets, by partition (absent where it never
    /// committed).
    pub async fn committed_offsets(&self, topic: &str, group: &str) -> Result<Vec<(u32, u64)>> {
        let request = pb::GetCommittedOffsetsRequest {
            topic: Some(topic_ref(topic)),
            group: group.to_string(),
            partition: None,
        };
        let response = self
            .call(Target::Any, Retry::Idempotent, |mut g, _| {
                let r = request.clone();
                async move { g.get_committed_offsets(r).await }
            })
            .await?;
        Ok(response
            .offsets
            .into_iter()
            .map(|o| (o.partition, o.offset))
            .collect())
    }
}
