//! Broker questions a reader asks off the thread that polls it. High watermarks and the
//! group's committed offsets each cost a broker round trip (100–200 ms on Tansu, up to
//! [`CHECK_TIMEOUT`] when a broker is slow); asked on a timely worker they held up every
//! utterance behind them, which was most of the engine's overhead at light load. One
//! thread per reader, with a client of its own, answers them in order.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::mpsc::{channel, Receiver, Sender};

use super::reader::ReaderContext;
use super::{KafkaConnectorError, KafkaSettings};

/// Each broker request waits at most this long.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// The high watermarks of these partitions, and every listed partition's committed
    /// offset for the group (the lost-log check).
    Check {
        /// Comes back with the answer, so an answer to a check given up is known.
        id: u64,
        highs_of: Vec<i32>,
        committed_of: Vec<i32>,
    },
    /// The high watermarks of these partitions (consumer lag).
    Highs(Vec<i32>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Watermarks of the partitions the broker answered for; `committed` is `None` when
    /// the broker did not answer (unknown is not "forgotten").
    Check {
        id: u64,
        highs: BTreeMap<i32, i64>,
        committed: Option<BTreeMap<i32, i64>>,
    },
    Highs(BTreeMap<i32, i64>),
}

/// The asking thread of one reader. Dropping it ends the thread after its current
/// question.
pub struct Asker {
    questions: Sender<Question>,
    answers: Receiver<Answer>,
}

impl Asker {
    pub fn start(settings: &KafkaSettings, topic: &str) -> Result<Asker, KafkaConnectorError> {
        let client = settings.consumer_with(ReaderContext::default())?;
        let (questions, asked) = channel::<Question>();
        let (answer, answers) = channel();
        let (settings, topic) = (settings.clone(), topic.to_string());
        std::thread::Builder::new()
            .name(format!("kafka-ask-{topic}"))
            .spawn(move || answer_all(client, &settings, &topic, &asked, &answer))
            .map_err(KafkaConnectorError::Thread)?;
        Ok(Asker { questions, answers })
    }

    pub fn ask(&self, question: Question) {
        let _ = self.questions.send(question);
    }

    /// The next answer, if one has come; never waits.
    pub fn answer(&self) -> Option<Answer> {
        self.answers.try_recv().ok()
    }
}

fn answer_all(
    mut client: BaseConsumer<ReaderContext>,
    settings: &KafkaSettings,
    topic: &str,
    asked: &Receiver<Question>,
    answer: &Sender<Answer>,
) {
    for question in asked.iter() {
        // A dropped connection may mean a replaced broker: a fresh client holds no
        // metadata of the old topic (see `PartitionReader::rebuild`).
        if client.context().disconnected.swap(false, Ordering::AcqRel) {
            if let Ok(fresh) = settings.consumer_with(ReaderContext::default()) {
                client = fresh;
            }
        }
        let reply = match question {
            Question::Check {
                id,
                highs_of,
                committed_of,
            } => Answer::Check {
                id,
                highs: highs(&client, topic, &highs_of, CHECK_TIMEOUT),
                committed: committed(&client, topic, &committed_of),
            },
            Question::Highs(of) => Answer::Highs(highs(&client, topic, &of, CHECK_TIMEOUT)),
        };
        if answer.send(reply).is_err() {
            return;
        }
    }
}

/// The high watermark of each partition the broker answered for, waiting at most
/// `timeout` per partition.
pub fn highs<C: Consumer<ReaderContext>>(
    client: &C,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> BTreeMap<i32, i64> {
    partitions
        .iter()
        .filter_map(|p| {
            let (_, high) = client.fetch_watermarks(topic, *p, timeout).ok()?;
            Some((*p, high))
        })
        .collect()
}

/// Committed offsets the broker holds for the group (a partition absent: none); `None`
/// when the broker did not answer.
pub fn committed<C: Consumer<ReaderContext>>(
    client: &C,
    topic: &str,
    partitions: &[i32],
) -> Option<BTreeMap<i32, i64>> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let answer = client.committed_offsets(tpl, CHECK_TIMEOUT).ok()?;
    let committed = answer
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    Some(committed)
}
