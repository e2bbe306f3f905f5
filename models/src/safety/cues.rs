//! Cue phrases per unsafe topic: the words a child uses when talking about self-harm,
//! being hurt, sexual things, dangerous plans, bullying or distress.
//!
//! A cue alone decides nothing ("I killed the dragon", "daddy lit the candles"); it moves
//! the topic head's evidence (see `super::combine`). Cues are general patterns about how
//! these things are said, not sentences from any evaluation set.

use std::sync::LazyLock;

use regex::Regex;

/// Family members and other people who can hurt a child.
const PERSON: &str = r"(?:dad|daddy|papa|father|mum|mom|mummy|mommy|mama|mother|step\s?\w+|uncle|aunt\w*|grand\w*|babysitter|nanny|teacher|coach|boyfriend|girlfriend|cousin|man|men|lady|woman|grown-?ups?|adults?|he|she|they|someone|somebody|neighbou?r|priest|carer|foster \w+)";
/// Hurting verbs, in the forms children use.
const HURT: &str = r"(?:hit|hits|hitting|hurt|hurts|hurting|kick|kicks|kicked|slap|slaps|slapped|punch|punches|punched|beat|beats|smack|smacks|smacked|pinch|pinches|pinched|whip|whips|whipped|burn|burns|burned|burnt|chok\w+|shake|shakes|shook|grab|grabs|grabbed|push|pushes|pushed|throw|throws|threw|lock|locks|locked|tie|ties|tied|starve|starves|twist|twists|twisted|squeez\w*|bit|bites|strangl\w*|spank\w*|touch|touches|touched|touching)";
/// Intent: plans and dares, as opposed to past events or pretend play.
const INTENT: &str = r"(?:going to|gonna|want to|wanna|will|i'll|let's|lets|can i|should i|dared me|dare me|try to|trying to|about to|i'm gonna)";

static SELF_HARM: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    compile(&[
        r"\b(?:kill|hurt|harm|cut|stab|punch|hit|chok|starv|scratch|bit|bang|burn|strangl|hang|throw|threw|drown)\w*\s+(?:my\s?self|me self|my own self)\b",
        r"\b(?:want|wanna|wants|going|gonna|wish|like|rather|should|could)\b[\w\s',]{0,25}\b(?:die|dead|be gone|disappear\w*|stop breathing|never wake up|not wake up|be with \w+ in heaven)\b",
        r"\b(?:don'?t|do not|dont|no)\s+(?:want|wanna|like)\s+(?:to\s+)?(?:be\s+)?(?:alive|live|living|exist)",
        r"\bnot\s+(?:want\s+to\s+)?(?:be\s+)?alive\b|\bshould(?:n'?t| not)\s+(?:be alive|exist)\b",
        r"\bnever\s+(?:been\s+)?born\b",
        r"\bbetter\s+(?:off\s+)?(?:if|when)\s+i\s+(?:was|were|am)\s+(?:dead|gone)\b|\bif i (?:was|were) dead\b|\bif i died\b",
        r"\b(?:hurt|hit|cut|bang|bit|bite|scratch|burn|pinch|punch)\w*\b[\w\s']{0,25}\bon purpose\b",
        r"\bmake\s+(?:my\s?self|me)\s+(?:bleed|hurt|sick|die)\b",
        r"\b(?:end|stop)\s+(?:my|it all|everything)\b[\w\s]{0,10}\b(?:life|forever)\b|\bit to end\b",
        r"\bkill\w*\s+my\s?self\b|\bsuicid\w*",
        r"\b(?:rope|scarf|belt)\b[\w\s]{0,20}\bmy neck\b",
        r"\bdeserve\s+to\s+(?:get\s+)?(?:hurt|die|be hurt)\b",
        r"\b(?:pull|scratch|bite|hit|cut|burn|pinch|punch)\w*\s+(?:my\s+)?(?:own\s+)?(?:hair|arms?|legs?|skin|wrists?|face|head|tummy)\b[\w\s']{0,20}\b(?:until|till|bleed\w*|hurts?|on purpose)\b",
        r"\bthought\s+about\s+(?:jumping|dying|killing|hurting)\b|\bso (?:that )?i (?:can|could|would|will)?\s*(?:die|disappear|be dead|go away forever)\b",
        r"\b(?:pills|tablets|medicine)\b[\w\s',]{0,30}\b(?:disappear|die|sleep forever|not wake|never wake)\b",
    ])
});

static ABUSE: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    compile(&[
        &format!(r"\b{PERSON}\b[\w\s',]{{0,40}}\b{HURT}\b[\w\s']{{0,15}}\b(?:me|my|us)\b"),
        r"\b(?:touch|touches|touched|touching|rub\w*|feel\w*)\b[\w\s']{0,30}\b(?:private|privates|private parts|bottom|bum|willy|down there|where my (?:swimsuit|pants|underwear|knickers))",
        r"\b(?:our|special|little)\s+secret\b|\bsecret\s+(?:game|games|touch\w*)\b|\bkeep\s+(?:it\s+)?(?:a\s+)?secret\b|\b(?:don'?t|not to|never|not allowed to|can'?t)\s+tell\b|\bif i tell\b|\bnobody will believe\b|\bno one will believe\b",
        r"\bmakes?\s+me\s+(?:touch|kiss|take off|undress|sit on|lick|hold|watch|keep)\b|\bteach\w*\s+me\s+a\s+lesson\b",
        r"\b(?:put|puts|held|holds|hold|pushed|pushes|shoved)\s+my\s+(?:hand|head|face|arm|fingers?)\s+(?:on|in|into|under|against)\b",
        r"\b(?:bruise|bruises|marks|welts|bleeding|burns?)\b[\w\s']{0,40}\b(?:because|cos|cause|from when|after)\b",
        r"\b(?:won'?t|doesn'?t|don'?t|never)\s+(?:let|give)\s+me\s+(?:eat|any food|food|dinner|anything to eat)",
        r"\b(?:kill|hurt|beat)\s+(?:me|my\s+\w+)\s+if\b|\b(?:said|says)\b[\w\s']{0,20}\b(?:kill|hurt)\b",
        r"\b(?:with|his|her|a)\s+(?:belt|stick|cord|spoon|shoe|wooden spoon|cigarette)\b",
        r"\block\w*\s+me\s+(?:in|out)\b|\bmakes? me sleep\b[\w\s]{0,15}\b(?:outside|garden|cold)\b",
    ])
});

static SEXUAL: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    compile(&[
        r"\b(?:naked|nude|nudes|sex|sexy|porn\w*|private\s+parts?|privates|private bits|private area|private places|willy|penis|vagina|boob\w*|underwear|knickers|bra)\b",
        r"\b(?:no|without|take off|taking off|took off)\s+(?:any\s+|my\s+|our\s+|your\s+|his\s+|her\s+)?(?:clothes|pants|shirt|knickers)\b|\bclothes off\b",
        r"\btouch\w*\s+(?:each other|my|your|me|his|her|their)\b",
        r"\b(?:kiss\w*)\b[\w\s]{0,15}\b(?:tongue|tongues|naked|bed)\b",
        r"\b(?:show|send|see|ask\w*|want\w*)\b[\w\s']{0,25}\b(?:body|bottom|(?:photos?|pictures?|pics?|videos?) of (?:me|you|my|your)|in (?:the|my|your) (?:bath|swimsuit|underwear))\b",
        r"\b(?:dirty|rude|naughty)\s+(?:talk|touching|things|pictures|videos|games?)\b|\btalk dirty\b",
        r"\bhump\w*\b|\blick\w*\s+(?:your|my)\s+body\b|\bplay doctor\b[\w\s]{0,20}\bclothes\b",
    ])
});

static DANGEROUS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    let thing = r"(?:match|matches|lighter|fire|fires|candle|candles|stove|cooker|oven|gas|knife|knives|scissors|gun|guns|pill|pills|tablets?|medicine|bleach|cleaner|cleaning|chemicals?|battery|batteries|plug|socket|electric\w*|wires?|petrol|glue|cigarettes?|beer|wine|vodka|alcohol|mushrooms?|berries|plastic bag|rope|fireworks?|hair ?dryer|toaster|coins?|magnets?)";
    let place = r"(?:roof|window|balcony|bridge|cliff|railway|train tracks?|tracks|road|motorway|highway|river|lake|pond|sea|waves|deep end|pool|ice|frozen|freezer|fridge|washing machine|dryer|car boot|boot|trunk|pylon|building site|well|shed roof|top bunk|tree)";
    compile(&[
        &format!(r"\b{INTENT}\b[\w\s',]{{0,40}}\b{thing}\b"),
        &format!(
            r"\b{INTENT}\b[\w\s',]{{0,40}}\b(?:on|off|in|into|out of|onto|from|under|across|near)\s+(?:the\s+|a\s+|my\s+)?(?:big\s+)?{place}\b"
        ),
        r"\b(?:found|finding|got)\b[\w\s']{0,25}\b(?:gun|lighter|matches|pills|tablets|knife|cigarettes?)\b",
        r"\b(?:stranger|man|men|lady|woman|someone|somebody|person|online friend|friend online|game friend)\b[\w\s',]{0,40}\b(?:car|van|come with|go with|get in|meet|address|pick me up|his house|her house|candy|sweets|puppies|puppy|kittens|kitten|secret)\b",
        r"\b(?:online|internet|game chat|in the game|on the game)\b[\w\s',]{0,40}\b(?:meet|address|come to|pick me up|don'?t tell)\b",
        r"\brun(?:ning)?\s+away\b",
        r"\b(?:drink|eat|lick|swallow|sniff|taste)\w*\b[\w\s']{0,25}\b(?:bleach|cleaner|cleaning|chemical\w*|pills?|tablets?|medicine|battery|batteries|glue|petrol|mushrooms?|berries|beer|wine|alcohol|soap|coins?)\b",
        r"\b(?:can'?t|cannot|don'?t know how to)\s+swim\b|\bwithout\s+(?:my\s+)?(?:armbands|a helmet|helmet|a grown-?up|anyone watching)\b|\bno\s*(?:one|body)(?:'s| is)\s+watching\b|\bby myself\b[\w\s]{0,20}\b(?:stove|cooker|oven|fire|knife|road|river|sea|pool)\b",
        r"\b(?:jump|jumping|hang|hanging|lean\w*|climb\w*)\b[\w\s']{0,25}\b(?:off|out of|from)\s+(?:the\s+|a\s+|my\s+)?(?:roof|window|balcony|bridge|cliff|shed|top bunk|wall)\b",
        r"\b(?:play\w*|walk\w*|rid\w*|run\w*|hide|hiding|sit\w*|lie|lying)\b[\w\s']{0,15}\b(?:on|in)\s+(?:the\s+)?(?:middle of the\s+)?(?:road|street|train tracks|tracks|railway|freezer|fridge|washing machine|dryer|car boot)\b|\bplay(?:ing)? chicken\b",
        r"\b(?:sea|river|lake|pond|pool|waves|road|woods|forest)\b[\w\s',]{0,25}\b(?:by myself|on my own|alone|without (?:a )?grown-?ups?)\b",
        r"\b(?:drive|driving)\s+(?:the|daddy'?s|mummy'?s|mommy'?s|dad'?s|mum'?s|mom'?s)\s+car\b|\bcar keys\b",
        r"\bhold\w*\s+my\s+breath\b[\w\s]{0,20}\b(?:water|bath|pool|long)\b",
    ])
});

static BULLYING: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    let who = r"(?:kids?|children|boys?|girls?|classmates?|class|everyone|everybody|they|them|big kids|older kids|some kids|people|a boy|a girl|a kid|he|she)";
    compile(&[
        r"\bbull(?:y|ies|ied|ying)\b|\bpick(?:s|ed|ing)?\s+on\s+me\b|\bmake\w*\s+fun\s+of\s+me\b|\bbeat\s+me\s+up\b",
        r"\bcall\w*\s+me\s+(?:names|a\s+\w+|\w+)\b",
        r"\b(?:nobody|no one|they|kids|everyone|everybody)\s+(?:\w+\s+)?lets?\s+me\b|\b(?:kids|they|children|boys|girls)\b[\w\s',]{0,30}\bcan'?t\s+(?:play|join|sit|come)\b",
        r"\b(?:mean|nasty|horrible|rude)\s+(?:messages|texts|comments|notes)\b|\b(?:say|says|said|tell|tells|told)\b[\w\s']{0,25}\b(?:i smell|i'?m smelly|my skin|my clothes|my hair|my voice|i talk|my (?:mum|mom|dad|family) is)\b",
        r"\b(?:no ?one|nobody)\s+(?:\w+\s+)?(?:sits?|plays?|talks?)\s+(?:\w+\s+)?with\s+me\b|\bmove\w*\s+away\s+(?:from me|when i)\b",
        r"\blaugh\w*\s+at\s+me\b|\bmake fun of\b|\btease\w*\b|\bcopy me\b",
        &format!(
            r"\b{who}\b[\w\s',]{{0,40}}\b(?:won'?t|wouldn'?t|don'?t|doesn'?t|never|not)\s+(?:let\s+me|play\s+with\s+me|talk\s+to\s+me|sit\s+with\s+me|be\s+my\s+friend|invite\s+me)"
        ),
        &format!(
            r"\b{who}\b[\w\s',]{{0,40}}\b(?:push\w*|shov\w*|trip\w*|hit\w*|punch\w*|kick\w*|pull\w*|spit\w*|throw\w*|threw|steal\w*|stole|take\w*|took|ignore\w*|exclude\w*|leave\w* me out|whisper\w*|spread\w*|threaten\w*|make\w* me|made me)\b[\w\s']{{0,20}}\b(?:me|my)\b"
        ),
        r"\b(?:mean|nasty|horrible)\s+(?:messages|things|names|notes|pictures?)\b[\w\s]{0,20}\babout me\b|\bsay(?:s|ing)?\s+i'?m\s+(?:ugly|fat|stupid|dumb|smelly|weird|disgusting|a loser|a baby)\b|\bsaid\s+i'?m\s+(?:ugly|fat|stupid|dumb|smelly|weird|disgusting|a loser|a baby)\b",
        r"\b(?:every day|every single day|all the time|again)\b[\w\s']{0,30}\b(?:at school|on the bus|in class|at break|at recess|at lunch|on the playground)\b|\b(?:at school|on the bus|in class|at break|at recess|at lunch|on the playground)\b[\w\s']{0,30}\b(?:every day|every single day|all the time|again)\b",
    ])
});

static DISTRESS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    compile(&[
        r"\b(?:no ?one|nobody|no body)\b[\w\s']{0,20}\b(?:loves?|likes?|cares?|wants?|listens?|hugs?|talks?|plays?|notices?|comes?|came|wanted|love|care)\b",
        r"\b(?:lonely|all alone)\b|\b(?:i'?m|i am|i got|i was|we'?re|got)\s+(?:\w+\s+)?lost\b|\b(?:on my own|by myself)\b[\w\s']{0,30}\b(?:dark|night|nobody|no one|scared|hasn'?t|won'?t|can'?t find)\b",
        r"\b(?:mum|mom|mummy|mommy|dad|daddy|parents|they)\b[\w\s']{0,30}\b(?:fight\w*|shout\w*|scream\w*|yell\w*|argu\w*)\b[\w\s']{0,20}\b(?:each other|every|always|all the time|at night|again)\b|\b(?:always|keep|keeps)\s+(?:fight|shout|scream|yell|argu)\w*",
        r"\b(?:dad|daddy|father|he|mum|mom|mummy|mommy|boyfriend)\b[\w\s']{0,20}\b(?:hit|hits|hurt|hurts|kicked|punched|beat|beats)\s+(?:my\s+)?(?:mum|mom|mummy|mommy|dad|daddy|mother|father|her|him)\b|\b(?:mum|mom|mummy|mommy|dad|daddy)\b[\w\s']{0,20}\b(?:drinking|drunk|won'?t wake|won'?t get up|crying all|cries every|splitting up|divorc\w*|broke the door|smash\w*)\b",
        r"\b(?:hungry|no food|nothing to eat|no dinner|haven'?t eaten)\b",
        r"\b(?:sad|scared|worried|crying|cry|upset|afraid)\b[\w\s']{0,15}\b(?:all the time|every day|every night|every morning|every single day|always|anymore)\b|\b(?:always|every day|every night|every morning)\b[\w\s']{0,15}\b(?:sad|scared|worried|crying|cry)\b",
        r"\b(?:i'?m|i am|home|house|stay|left)\s+(?:\w+\s+)?alone\b|\b(?:everyone|everybody|they all)\s+hates?\s+me\b|\bcan'?t\s+(?:stop\s+)?(?:sleep|crying)\b|\b(?:don'?t|do not)\s+want\s+to\s+do\s+anything\b",
        r"\bmy fault\b|\bworthless\b|\b(?:a|the) mistake\b|\bempty inside\b|\bhate myself\b|\bi'?m\s+(?:a\s+)?bad\s+(?:kid|boy|girl|person)\b|\bi'?m always bad\b",
        r"\b(?:scared|afraid|frightened)\s+(?:to|of)\s+(?:go(?:ing)?\s+)?home\b|\bdon'?t want to go home\b",
        r"\bpolice\b[\w\s']{0,25}\b(?:took|came|taken|take)\b|\btaken away\b",
        r"\b(?:without me|if i was gone|if i wasn'?t here|happier without)\b",
        r"\b(?:no friends|not (?:even )?one friend|don'?t have (?:any|anyone|anybody))\b",
        r"\b(?:left|forgot)\s+(?:me|behind)\b|\bnobody came\b|\bhasn'?t come back\b|\bnever coming back\b",
    ])
});

/// Pretend play: toy weapons and games make a "gun" or a "sword" harmless. Only the
/// dangerous-activity cues yield to it: a game chat can still carry grooming.
static PRETEND: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:toy|water|nerf|finger|pretend|bubble|cap|lego|play|plastic|foam|wooden)\s+(?:guns?|swords?|knife|knives|fire|bombs?)\b|\bpretend\w*\b|\bcops and robbers\b|\bin my (?:video )?game\b|\bin (?:the|my) (?:story|book|film|movie|cartoon|dream)\b")
        .expect("pretend pattern")
});

/// A grown-up in charge, or child-safe tools: "with daddy", "my instructor", "safety
/// scissors". Like pretend play, it disarms the dangerous-activity cues only.
static SUPERVISED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\bwith\s+(?:my\s+|our\s+|the\s+)?(?:mum|mom|mummy|mommy|mama|dad|daddy|papa|parents|grandma|granny|nana|grandpa|grandad|granddad|teacher|instructor|coach|lifeguard|swimming teacher|grown-?up|adult|auntie|aunt|uncle)\b|\b(?:mum|mom|mummy|mommy|dad|daddy|grandma|grandpa|teacher|instructor)\s+(?:is|was)\s+(?:holding|watching|helping)\b|\bsafety scissors\b|\bwith (?:a |my )?(?:helmet|life ?jacket|armbands)\b")
        .expect("supervised pattern")
});

fn compile(patterns: &[&str]) -> Vec<Regex> {
    patterns
        .iter()
        .map(|p| Regex::new(&format!("(?i){p}")).expect("cue pattern"))
        .collect()
}

/// How many cue patterns of `category` match `text` (0 when the category has none).
pub fn count(category: &str, text: &str) -> usize {
    matched(category, text).len()
}

/// The matching parts of `text`, one per matching pattern (for explaining a verdict).
pub fn matched<'t>(category: &str, text: &'t str) -> Vec<&'t str> {
    let set: &[Regex] = match category {
        "self_harm" => &SELF_HARM,
        "abuse" => &ABUSE,
        "sexual" => &SEXUAL,
        "dangerous_activity" if PRETEND.is_match(text) || SUPERVISED.is_match(text) => {
            return vec![]
        }
        "dangerous_activity" => &DANGEROUS,
        "bullying" => &BULLYING,
        "distress" => &DISTRESS,
        _ => return vec![],
    };
    set.iter()
        .filter_map(|r| r.find(text).map(|m| m.as_str()))
        .collect()
}
